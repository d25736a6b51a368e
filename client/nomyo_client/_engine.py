"""The request path shared by every client class: router key, seal, POST, retry, open.

Rules of this module:

- One pooled HTTP client (``_transport``) per engine and event loop, and the loop's shared agent
  connection (``_agent``). A script that calls ``asyncio.run`` twice with one client gets fresh
  ones on the second loop, since sockets cannot move between loops (the public client has no
  such state, so this must work). A client dropped without ``aclose`` releases both.
- Agent calls obey the client's ``timeout`` (its read timeout for an ``httpx.Timeout``), else
  ``_agent.DEFAULT_AGENT_TIMEOUT``.
- The router key is fetched once per origin and reused. When the router answers 400 to a request
  sealed to a cached key, the key is fetched again; if it changed, the agent re-checks it against
  its pin (refusing means nothing is sent) and the request is sent once more.
- The plaintext is sealed once per request; retries resend the same package and payload id.
- Only ``RETRYABLE_STATUSES`` and transport failures that prove the request never left
  (``TransportError.retryable``: the connect failed, or the connection was dead before one byte
  was written) are retried, with the ``RetryPolicy``'s backoff. A connection the router closed
  after reading the request, or a read timeout, is final: the router may have acted on it, and
  the public client does not resend it either.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nomyo_client import _wire
from nomyo_client._agent import AgentLink
from nomyo_client._errors import APIConnectionError, ResponseTooLargeError, SecurityError
from nomyo_client._retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from nomyo_client._routerkey import MAX_ROUTER_KEY_BITS, rsa_bits
from nomyo_client._transport import (
    MAX_RESPONSE_BYTES,
    Answer,
    AnswerTooLarge,
    Dropped,
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
class _Resources:
    """What a client holds on one loop: closed once, explicitly or when the client is gone."""

    http: H11Pool | HttpxAdapter
    owns_http: bool
    agent: AgentLink
    closed: bool = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.agent.aclose()
        if self.owns_http:
            await self.http.aclose()


@dataclass
class _LoopState:
    loop: asyncio.AbstractEventLoop
    resources: _Resources
    key_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    closer: AsyncGenerator[None, None] | None = None

    @property
    def http(self) -> H11Pool | HttpxAdapter:
        return self.resources.http

    @property
    def agent(self) -> AgentLink:
        return self.resources.agent

    @property
    def closed(self) -> bool:
        return self.resources.closed


async def _close_when_done(resources: _Resources) -> AsyncGenerator[None, None]:
    # Parked here for the client's life on this loop, this generator closes its sockets when
    # whichever comes first: asyncio.run() ending (loop.shutdown_asyncgens() closes every
    # suspended async generator), or the client being dropped unclosed, as the public client
    # allows (the loop's asyncgen finaliser hook closes a suspended generator that is garbage).
    # It must not reference the _LoopState: that would make a cycle, and a dropped client's
    # sockets would wait for the cyclic garbage collector.
    try:
        yield
    finally:
        await resources.close()


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
        self.agent_timeout = _agent_timeout(timeout)
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
        agent = AgentLink(
            self._agent_socket,
            autostart=self._autostart,
            key_dir=self._key_dir,
            timeout=self.agent_timeout,
        )
        resources = _Resources(http=http, owns_http=self._given_http is None, agent=agent)
        state = _LoopState(loop=loop, resources=resources)
        self._state = state  # before any await: concurrent first calls must share it
        state.closer = _close_when_done(resources)
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
        url = f"{base_url}/pki/public_key"
        try:
            # The size is checked from Content-Length (or as it streams), not after a download.
            response = await self._send(state, "GET", url, None, {}, limit=_MAX_ROUTER_KEY_BYTES)
        except ResponseTooLargeError as exc:
            raise SecurityError(
                f"the router's /pki/public_key answer is too large to be a key "
                f"(over {_MAX_ROUTER_KEY_BYTES} bytes)",
                hint="check the base URL: it must point at a NOMYO router",
            ) from exc
        if response.status_code != 200:
            error = _wire.error_for_status(response.status_code, response.content)
            error.message = f"could not fetch the router key: {error.message}"
            raise error
        try:
            key = response.content.decode("ascii")
        except UnicodeDecodeError as exc:
            raise SecurityError(
                "the router's /pki/public_key answer is not a PEM key",
                hint="check the base URL: it must point at a NOMYO router",
            ) from exc
        bits = rsa_bits(key)
        if bits is not None and bits > MAX_ROUTER_KEY_BITS:
            raise SecurityError(
                f"the router's public key has {bits} bits, over the {MAX_ROUTER_KEY_BITS} "
                "this client accepts",
                hint="no router uses such a key: check the base URL",
            )
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
        extra_headers: Mapping[str, str] | None = None,
        app: str = "",
    ) -> dict[str, Any]:
        """Seal, POST, retry, open: the decrypted completion with its ``_metadata``.

        ``extra_headers`` (the OpenAI SDK's option, checked by the caller) go on the POST.
        ``app`` names the app this request serves, for the agent's status and audit log (the
        proxy passes a token's name); an agent too old to know the field is not sent it.
        """
        # Header values are checked before the agent or the router sees anything.
        _wire.check_header_value("payload_id", payload_id)
        if isinstance(api_key, str) and api_key:
            _wire.check_header_value("api_key", api_key)
        state = await self._loop_state()
        origin = _wire.origin_of(base_url)
        url = f"{base_url}/v1/chat/secure_completion"
        router_key, fresh = await self.router_key(base_url)
        sealed = await state.agent.seal(origin, router_key, plaintext, app)
        headers = {
            **(extra_headers or {}),
            **_wire.request_headers(payload_id, sealed.public_key_pem, api_key, tier),
        }
        response = await self._send(state, "POST", url, sealed.package, headers)
        if response.status_code == 400 and not fresh:
            # Maybe the router rotated its key since we cached it: ask again, and let the agent
            # judge a new key against its pin before anything is resent.
            new_key = await self.fetch_router_key(base_url)
            if new_key != router_key:
                sealed = await state.agent.seal(origin, new_key, plaintext, app)
                headers = {
                    **(extra_headers or {}),
                    **_wire.request_headers(payload_id, sealed.public_key_pem, api_key, tier),
                }
                response = await self._send(state, "POST", url, sealed.package, headers)
        if response.status_code != 200:
            retry_after = parse_retry_after(response.headers, self.retry.clock())
            raise _wire.error_for_status(response.status_code, response.content, retry_after)
        return await self.open(response.content, payload_id, app=app)

    async def open(self, package: bytes, payload_id: str, *, app: str = "") -> dict[str, Any]:
        try:
            opened = await (await self._loop_state()).agent.open(package, app)
        except SecurityError:
            # The agent parsed it and says only that it did not open (no oracle); its structure
            # is public, and a garbage or downgraded answer is better named as such.
            _wire.refuse_package(package)
            raise
        return _wire.finish_response(opened.plaintext, payload_id, opened.processed_at)

    async def _send(
        self,
        state: _LoopState,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        limit: int | None = None,
    ) -> Answer:
        """One HTTP exchange with retries; a retryable status is returned once retries run out."""
        retry = 0
        while True:
            retry_after: float | None = None
            try:
                answer = await state.http.request(method, url, body, headers, limit=limit)
            except AnswerTooLarge as exc:
                # The router answered (and acted): not a connection failure, and not retried.
                cap = MAX_RESPONSE_BYTES if limit is None else min(limit, MAX_RESPONSE_BYTES)
                raise ResponseTooLargeError(
                    f"the router's answer from {url} is over the client's {_size(cap)} cap",
                    max_bytes=cap,
                ) from exc
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
            await state.closer.aclose()  # runs resources.close()


def _agent_timeout(timeout: float | httpx.Timeout | None) -> float | None:
    """The deadline of each agent call: the client's timeout when given, else the default."""
    if timeout is None or isinstance(timeout, (int, float)):
        return None if timeout is None else float(timeout)
    return timeout.read


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def _connection_error(url: str, exc: TransportError, retries: int) -> APIConnectionError:
    tries = f" after {retries + 1} attempts" if retries else ""
    if exc.retryable:
        return APIConnectionError(f"could not reach the router at {url}{tries}: {exc}")
    if isinstance(exc, Dropped):
        return APIConnectionError(
            f"the router closed the connection before answering {url}{tries}: {exc}",
            hint="the request was not resent, since the router may have acted on it; "
            "send it again yourself if that is safe",
        )
    return APIConnectionError(f"the router at {url} sent an unusable answer{tries}: {exc}")
