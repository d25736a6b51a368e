"""The ASGI app: OpenAI's chat-completions surface in front of the agent and the router.

Rules of this module (checked in this order for every request, before any body is read):

1. ``Host`` must name the listen address, a loopback name or an ``--allow-host`` (DNS
   rebinding: a web page's own host name that resolves to 127.0.0.1 is refused).
2. A request with an ``Origin`` header is refused unless the origin was allowed with
   ``--allow-origin``; only then are CORS headers sent, so a web page cannot read an answer.
3. Only ``/v1/chat/completions`` (POST) and ``/v1/models`` (GET) exist; the rest is a 404.
4. ``Authorization: Bearer <token>`` must match a stored token; its name is the app's name,
   handed to the agent with every seal and open (status, audit log).
5. The head (uvicorn, ``_protocol``) and then the body are each read within ``request_timeout``
   seconds, the body up to the client's payload cap; it must be a JSON object with ``model``
   and ``messages``. The router's API key and URL are the proxy's own: a request that tries to
   set ``api_key`` or ``base_url`` is refused.

Every failure is OpenAI's error JSON (``_errors.HTTPError``). The answer of a streaming request
is computed whole first (routers do not stream), so an error is still a plain error answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from nomyo_client import APIError, RetryPolicy
from nomyo_client import _wire as wire
from nomyo_client._engine import Engine
from nomyo_proxy._errors import HTTPError, TokenError, for_client_error
from nomyo_proxy._stream import sse_events
from nomyo_proxy._tokens import TokenStore

__all__ = ["LOOPBACK_HOSTS", "ProxyApp", "Settings"]

log = logging.getLogger("nomyo_proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# The client refuses payloads over 10 MiB of JSON; what an app sends is that JSON plus `stream`
# and the like, so a little slack, and nothing more is ever buffered.
MAX_BODY_BYTES = wire.MAX_PAYLOAD_BYTES + 64 * 1024
_JSON = (b"content-type", b"application/json")
# After an answer to a body that was not read whole, the connection cannot carry another request.
_CLOSE = ((b"connection", b"close"),)


@dataclasses.dataclass(frozen=True)
class Settings:
    router_url: str
    api_key: str | None = None
    allow_http: bool = False
    listen_host: str = "127.0.0.1"
    allow_hosts: frozenset[str] = frozenset()
    allow_origins: frozenset[str] = frozenset()
    models: tuple[str, ...] = ()  # /v1/models when the router has no list
    request_timeout: float = 30.0
    max_body: int = MAX_BODY_BYTES
    agent_socket: str | None = None
    router_timeout: float | None = None

    def host_allowed(self, host: str) -> bool:
        allowed = LOOPBACK_HOSTS | {self.listen_host.lower()} | self.allow_hosts
        return host in allowed


def host_name(header: str) -> str:
    """``Host`` without its port, lower-case, brackets and trailing dot removed."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _error(status: int, message: str, type: str, code: str | None = None) -> HTTPError:
    return HTTPError(status, message, type=type, code=code)


class ProxyApp:
    """``ProxyApp(settings, tokens)`` is an ASGI 3 application (uvicorn serves it)."""

    def __init__(self, settings: Settings, tokens: TokenStore) -> None:
        self.settings = settings
        self.tokens = tokens
        self.router = wire.check_base_url(settings.router_url, settings.allow_http)
        # No retries here: the app's own SDK retries (with its own policy) on the statuses we pass
        # through, and two layers of retries would multiply the wait.
        self.engine = Engine(
            allow_http=settings.allow_http,
            retry=RetryPolicy(max_retries=0),
            timeout=settings.router_timeout,
            http_client=None,
            agent_socket=settings.agent_socket,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: uvicorn answers 403 when the app declines
            return
        started = time.monotonic()
        cors: tuple[tuple[bytes, bytes], ...] = ()
        app = "-"
        status = 500
        answering = False

        raw_send = send

        async def tracked(message: Message) -> None:
            nonlocal answering
            answering = True
            await raw_send(message)

        send = tracked
        try:
            headers = _headers(scope)
            cors = self._check_origin_and_host(headers)
            method, path = scope["method"], scope["path"]
            if method == "OPTIONS" and cors:
                status = 204
                await _respond(send, 204, b"", cors + _PREFLIGHT)
                return
            route = _ROUTES.get(path)
            if route is None:
                raise _error(404, f"unknown path {path}", "invalid_request_error", "not_found")
            if method != route:
                raise _error(
                    405, f"{path} takes {route}", "invalid_request_error", "method_not_allowed"
                )
            app = self._authenticate(headers)
            if path == "/v1/models":
                status = 200
                await _respond(send, 200, await self._models(), (_JSON, *cors))
                return
            body = await self._read_body(headers, receive)
            status = await self._chat(body, app, send, cors)
        except HTTPError as exc:
            status = exc.status
            await _respond(send, exc.status, exc.body(), (_JSON, *exc.headers, *cors))
        except TokenError as exc:
            log.error("%s", exc.message)  # noqa: TRY400 - the message says it all
            error = HTTPError(
                500, exc.message, type="server_error", code="token_file", hint=exc.hint
            )
            await _respond(send, 500, error.body(), (_JSON, *cors))
        except Exception:
            # A bug here must still answer in OpenAI's format (when nothing was sent yet), and
            # never take the other requests down.
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if answering:
                raise
            error = HTTPError(
                500, "nomyo-proxy failed on this request; see its log", type="server_error"
            )
            await _respond(send, 500, error.body(), (_JSON, *cors))
        finally:
            log.info(
                "%s %s app=%s %d %.1f ms",
                scope.get("method"),
                scope.get("path"),
                app,
                status,
                (time.monotonic() - started) * 1000,
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.engine.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- the checks ----------------------------------------------------------------------

    def _check_origin_and_host(
        self, headers: dict[bytes, bytes]
    ) -> tuple[tuple[bytes, bytes], ...]:
        """Raises for a refused Host or Origin; returns the CORS headers to send (often none)."""
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if not host or not self.settings.host_allowed(host):
            raise _error(
                403,
                f"host {host or '(none)'} is not this proxy's address",
                "permission_error",
                "host_not_allowed",
            )
        origin = headers.get(b"origin")
        if origin is None:
            return ()
        if origin.decode("latin-1") not in self.settings.allow_origins:
            raise _error(
                403,
                "requests from web pages are refused (Origin header)",
                "permission_error",
                "origin_not_allowed",
            )
        return ((b"access-control-allow-origin", origin), (b"vary", b"Origin"))

    def _authenticate(self, headers: dict[bytes, bytes]) -> str:
        raw = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = raw.partition(" ")
        name = self.tokens.check(token.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            raise HTTPError(
                401,
                "invalid or missing token",
                type="invalid_request_error",
                code="invalid_api_key",
                hint="use a token from `nomyo-proxy token create NAME` as the API key",
            )
        return name

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        limit = self.settings.max_body
        too_large = HTTPError(
            413,
            f"the request body is over {limit} bytes",
            type="invalid_request_error",
            code="too_large",
            headers=_CLOSE,
        )
        try:
            if int(headers.get(b"content-length", b"0")) > limit:
                raise too_large
        except ValueError:
            raise _error(400, "invalid Content-Length", "invalid_request_error") from None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _error(400, "the client went away", "invalid_request_error")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise HTTPError(
                408,
                f"the request body did not arrive within {self.settings.request_timeout:g} s",
                type="invalid_request_error",
                code="timeout",
                headers=_CLOSE,
            ) from None

    # --- the endpoints -------------------------------------------------------------------

    async def _chat(
        self, body: bytes, app: str, send: Send, cors: tuple[tuple[bytes, bytes], ...]
    ) -> int:
        request = _parse_request(body)
        stream = request.pop("stream", False)
        options = request.pop("stream_options", None)
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        for key in ("api_key", "base_url"):
            if key in request:
                raise HTTPError(
                    400,
                    f"{key} cannot be set by an app",
                    type="invalid_request_error",
                    param=key,
                    hint="nomyo-proxy uses its own router and API key",
                )
        try:
            tier = wire.check_tier(request.pop("security_tier", None))
            model, messages = request.pop("model"), request.pop("messages")
            plaintext = wire.build_payload(model, messages, request)
            answer = await self.engine.send(
                self.router, plaintext, wire.new_payload_id(), self.settings.api_key, tier, app=app
            )
        except APIError as exc:
            raise for_client_error(exc) from exc
        if not stream:
            await _respond(send, 200, msgspec.json.encode(answer), (_JSON, *cors))
            return 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    *cors,
                ],
            }
        )
        for event in sse_events(answer, include_usage):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200

    async def _models(self) -> bytes:
        """The router's own list when it serves one, else the models named with ``--model``."""
        headers = (
            {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        )
        try:
            answer = await self.engine.get(f"{self.router}/v1/models", headers)
        except APIError:
            answer = None
        if answer is not None and answer.status_code == 200:
            try:
                listed = msgspec.json.decode(answer.content)
            except msgspec.DecodeError:
                listed = None
            if isinstance(listed, dict) and isinstance(listed.get("data"), list):
                return msgspec.json.encode({"object": "list", "data": listed["data"]})
        ids = list(self.settings.models)
        return msgspec.json.encode(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "nomyo"}
                    for name in ids
                ],
            }
        )


_ROUTES = {"/v1/chat/completions": "POST", "/v1/models": "GET"}
_PREFLIGHT = (
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-allow-headers", b"authorization, content-type"),
    (b"access-control-max-age", b"600"),
)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    # ASGI gives lower-case names; with a repeated header the last one wins, as in h11.
    return dict(scope["headers"])


def _parse_request(body: bytes) -> dict[str, Any]:
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _error(400, f"the body is not JSON: {exc}", "invalid_request_error") from exc
    if not isinstance(request, dict):
        raise _error(400, "the body must be a JSON object", "invalid_request_error")
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise HTTPError(400, "model is required", type="invalid_request_error", param="model")
    if not isinstance(request.get("messages"), list):
        raise HTTPError(
            400, "messages must be a list", type="invalid_request_error", param="messages"
        )
    return request


async def _respond(
    send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [length, *headers]})
    await send({"type": "http.response.body", "body": body})
