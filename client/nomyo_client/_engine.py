"""The request path shared by every client class: router key, seal, POST, retry, open.

Rules of this module:

- One pooled HTTP client (``_transport``) and one agent connection per engine and event loop.
  A script that calls ``asyncio.run`` twice with one client gets fresh ones on the second loop,
  since sockets cannot move between loops (the public client has no such state, so this must work).
- The router key is fetched once per origin and reused. When the router answers 400 to a request
  sealed to a cached key, the key is fetched again; if it changed, the agent re-checks it against
  its pin (refusing means nothing is sent) and the request is sent once more.
- The plaintext is sealed once per request; retries resend the same package and payload id.
- Only ``RETRYABLE_STATUSES`` and transport failures before an answer are retried, with the
  ``RetryPolicy``'s backoff. A read timeout is not retried: the router may still be working.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nomyo_client import _wire
from nomyo_client._agent import AgentLink
from nomyo_client._errors import APIConnectionError, SecurityError
from nomyo_client._retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from nomyo_client._transport import (
    Answer,
    H11Pool,
    HttpxAdapter,
    TimedOut,
    Timeouts,
    TransportError,
    default_http,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["Engine"]

_MAX_ROUTER_KEY_BYTES = 64 * 1024


@dataclass
class _LoopState:
    loop: asyncio.AbstractEventLoop
    http: H11Pool | HttpxAdapter
    owns_http: bool
    agent: AgentLink
    key_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    closer: AsyncGenerator[None, None] | None = None
    closed: bool = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.agent.aclose()
        if self.owns_http:
            await self.http.aclose()


async def _close_at_loop_shutdown(state: _LoopState) -> AsyncGenerator[None, None]:
    # asyncio.run() ends with loop.shutdown_asyncgens(), which closes every async generator
    # still suspended on that loop: parked here, this one closes the loop's sockets then, so a
    # script that never closes its client (as the public client allows) leaks nothing.
    try:
        yield
    finally:
        await state.close()


class Engine:
    """Everything but the public signatures; see ``SecureChatCompletion`` for those."""

    def __init__(
        self,
        *,
        allow_http: bool,
        retry: RetryPolicy,
        timeout: float | httpx.Timeout | None,
        http_client: httpx.AsyncClient | H11Pool | None,
        agent_socket: str | os.PathLike[str] | None,
        autostart: bool | None = None,
        key_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.allow_http = allow_http
        self.retry = retry
        self.timeouts = Timeouts.of(timeout)
        self._given_http = http_client
        self._agent_socket = None if agent_socket is None else os.fspath(agent_socket)
        self._autostart = autostart
        self._key_dir = key_dir
        self._router_keys: dict[str, str] = {}
        self._state: _LoopState | None = None

    async def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._state
        if state is not None and state.loop is loop and not state.closed:
            return state
        given = self._given_http
        http: H11Pool | HttpxAdapter
        if given is None:
            http = default_http(self.timeouts)
        elif isinstance(given, H11Pool):
            http = given
        else:
            http = HttpxAdapter(given)
        agent = AgentLink(self._agent_socket, autostart=self._autostart, key_dir=self._key_dir)
        state = _LoopState(loop=loop, http=http, owns_http=self._given_http is None, agent=agent)
        self._state = state  # before any await: concurrent first calls must share it
        state.closer = _close_at_loop_shutdown(state)
        await state.closer.__anext__()
        return state

    async def agent(self) -> AgentLink:
        return (await self._loop_state()).agent

    # --- the router key ------------------------------------------------------------------

    async def router_key(self, base_url: str) -> tuple[str, bool]:
        """The router's key PEM for ``base_url``'s origin and whether it was fetched just now."""
        origin = _wire.origin_of(base_url)
        key = self._router_keys.get(origin)
        if key is not None:
            return key, False
        state = await self._loop_state()
        lock = state.key_locks.setdefault(origin, asyncio.Lock())
        async with lock:  # sixteen concurrent first requests fetch the key once
            key = self._router_keys.get(origin)
            if key is not None:
                return key, False
            key = await self.fetch_router_key(base_url)
            return key, True

    async def fetch_router_key(self, base_url: str) -> str:
        """GET ``/pki/public_key`` (with retries) and remember the answer for the origin."""
        state = await self._loop_state()
        response = await self._send(state, "GET", f"{base_url}/pki/public_key", None, {})
        if response.status_code != 200:
            error = _wire.error_for_status(response.status_code, response.content)
            error.message = f"could not fetch the router key: {error.message}"
            raise error
        if len(response.content) > _MAX_ROUTER_KEY_BYTES:
            raise SecurityError("the router's /pki/public_key answer is too large to be a key")
        try:
            key = response.content.decode("ascii")
        except UnicodeDecodeError as exc:
            raise SecurityError(
                "the router's /pki/public_key answer is not a PEM key",
                hint="check the base URL: it must point at a NOMYO router",
            ) from exc
        self._router_keys[_wire.origin_of(base_url)] = key
        return key

    async def get(self, url: str, headers: dict[str, str]) -> Answer:
        """One GET on the pooled HTTP client, with the retry policy (nomyo-proxy's model list)."""
        return await self._send(await self._loop_state(), "GET", url, None, headers)

    # --- one request ---------------------------------------------------------------------

    async def send(
        self,
        base_url: str,
        plaintext: bytes,
        payload_id: str,
        api_key: str | None,
        tier: str | None,
        *,
        app: str = "",
    ) -> dict[str, Any]:
        """Seal, POST, retry, open: the decrypted completion with its ``_metadata``.

        ``app`` names the app this request serves, for the agent's status and audit log (the
        proxy passes a token's name); an agent too old to know the field is not sent it."""
        state = await self._loop_state()
        origin = _wire.origin_of(base_url)
        url = f"{base_url}/v1/chat/secure_completion"
        router_key, fresh = await self.router_key(base_url)
        sealed = await state.agent.seal(origin, router_key, plaintext, app)
        headers = _wire.request_headers(payload_id, sealed.public_key_pem, api_key, tier)
        response = await self._send(state, "POST", url, sealed.package, headers)
        if response.status_code == 400 and not fresh:
            # Maybe the router rotated its key since we cached it: ask again, and let the agent
            # judge a new key against its pin before anything is resent.
            new_key = await self.fetch_router_key(base_url)
            if new_key != router_key:
                sealed = await state.agent.seal(origin, new_key, plaintext, app)
                headers = _wire.request_headers(payload_id, sealed.public_key_pem, api_key, tier)
                response = await self._send(state, "POST", url, sealed.package, headers)
        if response.status_code != 200:
            retry_after = parse_retry_after(response.headers, self.retry.clock())
            raise _wire.error_for_status(response.status_code, response.content, retry_after)
        return await self.open(response.content, payload_id, app=app)

    async def open(self, package: bytes, payload_id: str, *, app: str = "") -> dict[str, Any]:
        algorithm, processed_at = _wire.parse_package(package)
        opened = await (await self._loop_state()).agent.open(package, app)
        return _wire.finish_response(opened.plaintext, payload_id, algorithm, processed_at)

    async def _send(
        self,
        state: _LoopState,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> Answer:
        """One HTTP exchange with retries; a retryable status is returned once retries run out."""
        retry = 0
        while True:
            retry_after: float | None = None
            try:
                answer = await state.http.request(method, url, body, headers)
            except TimedOut as exc:
                raise APIConnectionError(
                    f"the router did not answer {url} in time ({exc})",
                    hint="raise timeout= for long generations; the request was not retried",
                ) from exc
            except TransportError as exc:
                if not exc.retryable or retry >= self.retry.max_retries:
                    raise _connection_error(url, exc, retry) from exc
            else:
                if answer.status_code not in RETRYABLE_STATUSES:
                    return answer
                if retry >= self.retry.max_retries:
                    return answer
                retry_after = parse_retry_after(answer.headers, self.retry.clock())
            retry += 1
            await self.retry.sleep(self.retry.delay(retry, retry_after))

    async def aclose(self) -> None:
        state, self._state = self._state, None
        # Sockets of another (finished) loop were closed by its shutdown; none to close here.
        if (
            state is not None
            and state.closer is not None
            and state.loop is asyncio.get_running_loop()
        ):
            await state.closer.aclose()  # runs state.close()


def _connection_error(url: str, exc: TransportError, retries: int) -> APIConnectionError:
    tries = f" after {retries + 1} attempts" if retries else ""
    return APIConnectionError(f"could not reach the router at {url}{tries}: {exc}")
