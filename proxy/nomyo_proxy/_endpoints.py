"""What the proxy's two endpoints answer, once ``_app`` has let a request through its checks.

Rules of this module:

- A chat-completions body must be a JSON object with ``model`` and ``messages``. The router's
  API key and URL are the proxy's own: a request that tries to set ``api_key`` or ``base_url``
  is refused.
- The answer of a streaming request is computed whole first (routers do not stream), so an
  error is still a plain error answer; only a whole answer is cut into server-sent events.
- ``/v1/models`` is the router's own list when it serves one, else the ``--model`` names.
- Every failure is raised as an ``_errors.HTTPError``; ``_app`` turns it into OpenAI's JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from nomyo_client import APIError
from nomyo_client import _wire as wire
from nomyo_client._engine import Engine
from nomyo_proxy._errors import HTTPError, for_client_error
from nomyo_proxy._stream import sse_events

__all__ = ["JSON", "Headers", "Message", "Send", "chat", "http_error", "models", "respond"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]

JSON = (b"content-type", b"application/json")


def http_error(status: int, message: str, type: str, code: str | None = None) -> HTTPError:
    return HTTPError(status, message, type=type, code=code)


async def chat(
    engine: Engine,
    router: str,
    api_key: str | None,
    body: bytes,
    *,
    app: str,
    send: Send,
    cors: Headers,
) -> int:
    """Seal ``body`` for ``app``, send it to ``router`` and answer; returns the status sent."""
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
        answer = await engine.send(router, plaintext, wire.new_payload_id(), api_key, tier, app=app)
    except APIError as exc:
        raise for_client_error(exc) from exc
    if not stream:
        await respond(send, 200, msgspec.json.encode(answer), (JSON, *cors))
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


async def models(engine: Engine, router: str, api_key: str | None, named: tuple[str, ...]) -> bytes:
    """The router's own list when it serves one, else the models ``named`` with ``--model``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        answer = await engine.get(f"{router}/v1/models", headers)
    except APIError:
        answer = None
    if answer is not None and answer.status_code == 200:
        try:
            listed = msgspec.json.decode(answer.content)
        except msgspec.DecodeError:
            listed = None
        if isinstance(listed, dict) and isinstance(listed.get("data"), list):
            return msgspec.json.encode({"object": "list", "data": listed["data"]})
    return msgspec.json.encode(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "nomyo"} for name in named
            ],
        }
    )


def _parse_request(body: bytes) -> dict[str, Any]:
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise http_error(400, f"the body is not JSON: {exc}", "invalid_request_error") from exc
    if not isinstance(request, dict):
        raise http_error(400, "the body must be a JSON object", "invalid_request_error")
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise HTTPError(400, "model is required", type="invalid_request_error", param="model")
    if not isinstance(request.get("messages"), list):
        raise HTTPError(
            400, "messages must be a list", type="invalid_request_error", param="messages"
        )
    return request


async def respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [length, *headers]})
    await send({"type": "http.response.body", "body": body})
