"""Better hints for errors whose cause is in how the client was pointed at the router.

Rules of this module: it only rewrites the ``hint`` (and never the type or message) of an
``APIError`` that is already on its way up, from facts the lower layers cannot see: the base URL
as the user typed it and the proxy settings in the environment. It does no I/O but reading the
environment.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping

from nomyo_client._errors import APIConnectionError, APIError, TLSError

__all__ = ["explain"]


def _bypassed(host: str, no_proxy: str) -> bool:
    """``NO_PROXY``'s rule as httpx and curl read it: ``*``, or host names and domain suffixes."""
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


def _proxy_for(url: str, proxies: Mapping[str, str]) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if _bypassed((parts.hostname or "").lower(), proxies.get("no", "")):
        return None
    return proxies.get(parts.scheme.lower()) or proxies.get("all")


def explain(exc: APIError, base_url: str, proxies: Mapping[str, str] | None = None) -> APIError:
    """``exc`` with a hint that names the likely cause; returns ``exc`` itself."""
    parts = urllib.parse.urlsplit(base_url)
    if exc.status_code == 404 and parts.path.rstrip("/").lower().endswith("/v1"):
        root = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path[:-3], "", ""))
        exc.hint = (
            f"the base URL is the router's root, without /v1: use {root.rstrip('/')} "
            "(the client adds /v1/chat/secure_completion itself)"
        )
        return exc
    if not isinstance(exc, APIConnectionError):
        return exc
    if parts.scheme.lower() == "https" and isinstance(exc, TLSError) and exc.plain_http:
        plain = urllib.parse.urlunsplit(("http", parts.netloc, parts.path, "", ""))
        exc.hint = (
            f"the server at {parts.netloc} does not speak TLS: for a local development router "
            f"use {plain} with allow_http=True"
        )
        return exc
    env_proxies = urllib.request.getproxies_environment() if proxies is None else proxies
    proxy = _proxy_for(base_url, env_proxies)
    if proxy:
        exc.hint = (
            f"the connection goes through the proxy {proxy} from the environment "
            f"({parts.scheme.upper()}_PROXY / ALL_PROXY): check that it runs, or exempt the "
            f"router with NO_PROXY={parts.hostname}"
        )
    return exc
