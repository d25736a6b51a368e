"""The checks every request to the proxy passes: its Host, its Origin, its token, its body.

Rules of this module (``_app`` calls them in this order; no body is read before the first three
pass):

1. ``Host`` must name the listen address, a loopback name or an ``--allow-host`` (DNS
   rebinding: a web page's own host name that resolves to 127.0.0.1 is refused).
2. A request with an ``Origin`` header is refused unless the origin was allowed with
   ``--allow-origin``; only then are CORS headers returned, so a web page cannot read an answer.
3. ``Authorization: Bearer <token>`` must match a stored token; its name is the app's name.
4. The body is read within its deadline and up to its limit, never more; a body refused before
   it was read whole answers with ``Connection: close``.

Each refusal is raised as an ``_errors.HTTPError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nomyo_proxy._endpoints import Headers, Message, http_error
from nomyo_proxy._errors import HTTPError

if TYPE_CHECKING:
    from nomyo_proxy._tokens import TokenStore

__all__ = ["Receive", "authenticate", "check_host_and_origin", "host_name", "read_body"]

Receive = Callable[[], Awaitable[Message]]

# After an answer to a body that was not read whole, the connection cannot carry another request.
_CLOSE = ((b"connection", b"close"),)


def host_name(header: str) -> str:
    """``Host`` without its port, lower-case, brackets and trailing dot removed."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def check_host_and_origin(
    headers: dict[bytes, bytes], host_allowed: Callable[[str], bool], origins: frozenset[str]
) -> Headers:
    """Raises for a refused Host or Origin; returns the CORS headers to send (often none)."""
    host = host_name(headers.get(b"host", b"").decode("latin-1"))
    if not host or not host_allowed(host):
        raise http_error(
            403,
            f"host {host or '(none)'} is not this proxy's address",
            "permission_error",
            "host_not_allowed",
        )
    origin = headers.get(b"origin")
    if origin is None:
        return ()
    if origin.decode("latin-1") not in origins:
        raise http_error(
            403,
            "requests from web pages are refused (Origin header)",
            "permission_error",
            "origin_not_allowed",
        )
    return ((b"access-control-allow-origin", origin), (b"vary", b"Origin"))


def authenticate(headers: dict[bytes, bytes], tokens: TokenStore) -> str:
    raw = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = raw.partition(" ")
    name = tokens.check(token.strip()) if scheme.lower() == "bearer" else None
    if name is None:
        raise HTTPError(
            401,
            "invalid or missing token",
            type="invalid_request_error",
            code="invalid_api_key",
            hint="use a token from `nomyo-proxy token create NAME` as the API key",
        )
    return name


async def read_body(
    headers: dict[bytes, bytes], receive: Receive, limit: int, timeout: float
) -> bytes:
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
        raise http_error(400, "invalid Content-Length", "invalid_request_error") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise http_error(400, "the client went away", "invalid_request_error")
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
            f"the request body did not arrive within {timeout:g} s",
            type="invalid_request_error",
            code="timeout",
            headers=_CLOSE,
        ) from None
