"""The ASGI app: OpenAI's chat-completions surface in front of the agent and the router.

Rules of this module (checked in this order for every request, before any body is read):

1. ``Host`` must name this proxy and an ``Origin`` must have been allowed (``_checks``, which
   says why: DNS rebinding, and web pages reading answers).
2. Only ``/v1/chat/completions`` (POST) and ``/v1/models`` (GET) exist; the rest is a 404.
3. ``Authorization: Bearer <token>`` must match a stored token (``_checks``); its name is the
   app's name, handed to the agent with every seal and open (status, audit log).
4. The head (uvicorn, ``_protocol``) and then the body (``_checks``) are each read within
   ``request_timeout`` seconds, the body up to the client's payload cap; what the endpoints
   make of it is ``_endpoints``'.

Every failure is OpenAI's error JSON (``_errors.HTTPError``), a bug's too while nothing of the
answer was sent; each request is logged on one line at info level.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import MutableMapping
from typing import Any

from nomyo_client import RetryPolicy
from nomyo_client import _wire as wire
from nomyo_client._engine import Engine
from nomyo_proxy._checks import Receive, authenticate, check_host_and_origin, read_body
from nomyo_proxy._endpoints import JSON, Message, Send, chat, http_error, models, respond
from nomyo_proxy._errors import HTTPError, TokenError
from nomyo_proxy._tokens import TokenStore

__all__ = ["LOOPBACK_HOSTS", "ProxyApp", "Settings"]

log = logging.getLogger("nomyo_proxy")

Scope = MutableMapping[str, Any]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# The client refuses payloads over 10 MiB of JSON; what an app sends is that JSON plus `stream`
# and the like, so a little slack, and nothing more is ever buffered.
MAX_BODY_BYTES = wire.MAX_PAYLOAD_BYTES + 64 * 1024


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
            cors = check_host_and_origin(
                headers, self.settings.host_allowed, self.settings.allow_origins
            )
            method, path = scope["method"], scope["path"]
            if method == "OPTIONS" and cors:
                status = 204
                await respond(send, 204, b"", cors + _PREFLIGHT)
                return
            route = _ROUTES.get(path)
            if route is None:
                raise http_error(404, f"unknown path {path}", "invalid_request_error", "not_found")
            if method != route:
                raise http_error(
                    405, f"{path} takes {route}", "invalid_request_error", "method_not_allowed"
                )
            app = authenticate(headers, self.tokens)
            if path == "/v1/models":
                status = 200
                await respond(
                    send,
                    200,
                    await models(
                        self.engine, self.router, self.settings.api_key, self.settings.models
                    ),
                    (JSON, *cors),
                )
                return
            body = await read_body(
                headers, receive, self.settings.max_body, self.settings.request_timeout
            )
            status = await chat(
                self.engine, self.router, self.settings.api_key, body, app=app, send=send, cors=cors
            )
        except HTTPError as exc:
            status = exc.status
            await respond(send, exc.status, exc.body(), (JSON, *exc.headers, *cors))
        except TokenError as exc:
            log.error("%s", exc.message)  # noqa: TRY400 - the message says it all
            error = HTTPError(
                500, exc.message, type="server_error", code="token_file", hint=exc.hint
            )
            await respond(send, 500, error.body(), (JSON, *cors))
        except Exception:
            # A bug here must still answer in OpenAI's format (when nothing was sent yet), and
            # never take the other requests down.
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if answering:
                raise
            error = HTTPError(
                500, "nomyo-proxy failed on this request; see its log", type="server_error"
            )
            await respond(send, 500, error.body(), (JSON, *cors))
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


_ROUTES = {"/v1/chat/completions": "POST", "/v1/models": "GET"}
_PREFLIGHT = (
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-allow-headers", b"authorization, content-type"),
    (b"access-control-max-age", b"600"),
)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    # ASGI gives lower-case names; with a repeated header the last one wins, as in h11.
    return dict(scope["headers"])
