"""Settings and request options of the client, resolved before any I/O.

Rules of this module: pure functions but for reading the environment and ``stat`` of the socket's
folder. Where a setting comes from, first match wins: the argument of this call (``create``), the
constructor's argument, the environment (``NOMYO_BASE_URL``, ``NOMYO_API_KEY``), the default.
The OpenAI SDK's request options (``timeout``, ``extra_headers``, ``extra_body``) configure one
request; they never reach the payload the model reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from nomyo_agent.paths import socket_path, socket_path_problem
from nomyo_client import _wire
from nomyo_client._errors import AgentUnavailableError, InvalidRequestError

__all__ = ["DEFAULT_BASE_URL", "check_agent_socket", "env_default", "request_options"]

DEFAULT_BASE_URL = "https://api.nomyo.ai"
# Headers the protocol sets itself; an extra header must not change what the router reads.
_OWN_HEADERS = frozenset(
    {"content-type", "content-length", "host", "x-payload-id", "x-public-key", "x-security-tier"}
)


def check_agent_socket(agent_socket: str | os.PathLike[str] | None) -> None:
    """Refuse, before any connection or auto-start, a socket path no agent can listen on.

    Otherwise an over-long path surfaces as "lost the agent connection", and a path straight in
    ``/tmp`` makes an auto-started agent claim the shared folder.
    """
    problem = socket_path_problem(socket_path(agent_socket))
    if problem is not None:
        message, hint = problem
        # The CLI's hint names its option; here the caller passed agent_socket= (or the env).
        hint = hint.replace("--socket / NOMYO_AGENT_SOCK", "agent_socket= (or NOMYO_AGENT_SOCK)")
        raise AgentUnavailableError(
            message, hint=hint.replace("use --socket ", "use agent_socket=")
        )


def env_default(value: str | None, name: str, default: str | None = None) -> str | None:
    """``value`` if given, else the environment variable ``name`` if set and not empty."""
    if value is not None:
        return value
    return os.environ.get(name) or default


def request_options(params: dict[str, Any]) -> tuple[float | None, dict[str, str]]:
    """Pop the OpenAI SDK's request options from ``params``: (timeout, extra headers).

    ``extra_body`` is merged into ``params`` (it is meant for the request body), never sent as
    a key of its own.
    """
    timeout = params.pop("timeout", None)
    extra_headers = params.pop("extra_headers", None) or {}
    extra_body = params.pop("extra_body", None) or {}
    if params.pop("extra_query", None):
        raise InvalidRequestError(
            "extra_query is not supported: the secure endpoint takes no query parameters",
            status_code=None,
            hint="leave extra_query out",
        )
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise InvalidRequestError(
            f"timeout must be a number of seconds > 0, not {timeout!r}",
            status_code=None,
            hint="pass timeout=60 (seconds), or set timeout= on SecureChatCompletion",
        )
    if not isinstance(extra_headers, Mapping) or not isinstance(extra_body, Mapping):
        raise InvalidRequestError("extra_headers and extra_body must be dicts", status_code=None)
    headers = {str(k): str(v) for k, v in extra_headers.items()}
    own = sorted(k for k in headers if k.lower() in _OWN_HEADERS or k.lower() == "authorization")
    if own:
        raise InvalidRequestError(
            f"extra_headers may not set {', '.join(own)}: the client sets them",
            status_code=None,
            hint="pass api_key= for Authorization and security_tier= for the tier",
        )
    leaked = sorted(_wire.NON_PAYLOAD_KEYS.intersection(extra_body))
    if leaked:
        raise InvalidRequestError(
            f"extra_body may not set {', '.join(leaked)}: they configure the client",
            status_code=None,
            hint="pass them as arguments of create() instead",
        )
    params.update(extra_body)
    return (None if timeout is None else float(timeout)), headers
