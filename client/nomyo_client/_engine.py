"""The request path shared by every client class: router key, seal, POST, retry, open.

Rules of this module:

- One ``Transport`` (``_transport``: the own pool, or httpx) per engine and event loop, and the
  loop's shared agent connection (``_agent``). A script that calls ``asyncio.run`` twice with
  one client gets fresh ones on the second loop, since sockets cannot move between loops (the
  public client has no such state, so this must work). A client dropped without ``aclose``
  releases both.
- Agent calls obey the client's ``timeout`` (its read timeout for an ``httpx.Timeout``), else
  ``_agent.DEFAULT_AGENT_TIMEOUT``.
- The router key is fetched once per origin and reused. When the router answers 400 to a request
  sealed to a cached key, the key is fetched again; if it changed, the agent re-checks it against
  its pin (refusing means nothing is sent) and the request is sent once more.
- The plaintext is sealed once per request; retries (``_exchange``: which failures, how often)
  resend the same package and payload id.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nomyo_client import _answer, _wire
from nomyo_client._agent import AgentLink
from nomyo_client._errors import (
    ResponseTooLargeError,
    SecurityError,
)
from nomyo_client._exchange import send_with_retries
from nomyo_client._httpx_adapter import as_transport, default_http
from nomyo_client._perloop import LoopState, on_this_loop
from nomyo_client._retry import RetryPolicy, parse_retry_after
from nomyo_client._routerkey import MAX_ROUTER_KEY_BITS, rsa_bits
from nomyo_client._transport import (
    Answer,
    Timeouts,
    Transport,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["Engine"]

_MAX_ROUTER_KEY_BYTES = 64 * 1024


class Engine:
    """Everything but the public signatures; see ``SecureChatCompletion`` for those."""

    def __init__(
        self,
        *,
        allow_http: bool,
        retry: RetryPolicy,
        timeout: float | httpx.Timeout | None,
        http_client: httpx.AsyncClient | Transport | None,
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
        self._state: LoopState | None = None

    async def _loop_state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        state = self._state
        if state is not None and state.loop is loop and not state.closed:
            return state
        given = self._given_http
        http = default_http(self.timeouts) if given is None else as_transport(given)
        agent = AgentLink(
            self._agent_socket,
            autostart=self._autostart,
            key_dir=self._key_dir,
            timeout=self.agent_timeout,
        )
        state = on_this_loop(http, given is None, agent)
        self._state = state  # before any await: concurrent first calls must share it
        await state.park()
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
            response = await send_with_retries(
                state.http,
                self.retry,
                "GET",
                url,
                body=None,
                headers={},
                limit=_MAX_ROUTER_KEY_BYTES,
            )
        except ResponseTooLargeError as exc:
            raise SecurityError(
                f"the router's /pki/public_key answer is too large to be a key "
                f"(over {_MAX_ROUTER_KEY_BYTES} bytes)",
                hint="check the base URL: it must point at a NOMYO router",
            ) from exc
        if response.status_code != 200:
            error = _answer.error_for_status(response.status_code, response.content)
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
        http = (await self._loop_state()).http
        return await send_with_retries(http, self.retry, "GET", url, body=None, headers=headers)

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

        async def post(key: str) -> Answer:
            sealed = await state.agent.seal(origin, key, plaintext, app)
            headers = {
                **(extra_headers or {}),
                **_wire.request_headers(payload_id, sealed.public_key_pem, api_key, tier),
            }
            return await send_with_retries(
                state.http, self.retry, "POST", url, body=sealed.package, headers=headers
            )

        response = await post(router_key)
        if response.status_code == 400 and not fresh:
            # Maybe the router rotated its key since we cached it: ask again, and let the agent
            # judge a new key against its pin before anything is resent.
            new_key = await self.fetch_router_key(base_url)
            if new_key != router_key:
                response = await post(new_key)
        if response.status_code != 200:
            retry_after = parse_retry_after(response.headers, self.retry.clock())
            raise _answer.error_for_status(response.status_code, response.content, retry_after)
        return await self.open(response.content, payload_id, app=app)

    async def open(self, package: bytes, payload_id: str, *, app: str = "") -> dict[str, Any]:
        try:
            opened = await (await self._loop_state()).agent.open(package, app)
        except SecurityError:
            # The agent parsed it and says only that it did not open (no oracle); its structure
            # is public, and a garbage or downgraded answer is better named as such.
            _answer.refuse_package(package)
            raise
        return _answer.finish_response(opened.plaintext, payload_id, opened.processed_at)

    async def aclose(self) -> None:
        state, self._state = self._state, None
        # Sockets of another (finished) loop were closed by its shutdown; none to close here.
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.close()


def _agent_timeout(timeout: float | httpx.Timeout | None) -> float | None:
    """The deadline of each agent call: the client's timeout when given, else the default."""
    if timeout is None or isinstance(timeout, (int, float)):
        return None if timeout is None else float(timeout)
    return timeout.read
