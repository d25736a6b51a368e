"""A whole ``chat.completion`` replayed as OpenAI's ``chat.completion.chunk`` stream (pure).

Routers answer encrypted requests whole, and many apps always ask for ``stream: true``; so the
proxy waits for the answer and then sends it as Server-Sent Events, in the order OpenAI does:
per choice a first chunk with the role, then the content (and reasoning, and tool calls with
their index), then one with ``finish_reason``; with ``stream_options.include_usage`` every chunk
carries ``"usage": null`` and a last chunk with no choices carries the usage; then
``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

__all__ = ["DONE", "sse_events"]

DONE = b"data: [DONE]\n\n"
_encoder = msgspec.json.Encoder()


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + _encoder.encode(data) + b"\n\n"


def _deltas(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield {"role": message.get("role") or "assistant", "content": ""}
    reasoning = message.get("reasoning_content")
    if reasoning:
        yield {"reasoning_content": reasoning}
    content = message.get("content")
    if content:
        yield {"content": content}
    for index, call in enumerate(message.get("tool_calls") or ()):
        if isinstance(call, dict):
            yield {"tool_calls": [{"index": index, **call}]}
    refusal = message.get("refusal")
    if refusal:
        yield {"refusal": refusal}


def sse_events(completion: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    """The SSE byte chunks for ``completion``, ending with ``data: [DONE]``."""
    head = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**head, "choices": [choice], **extra})

    for position, choice in enumerate(completion.get("choices") or ()):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        for delta in _deltas(choice.get("message") or {}):
            yield chunk(index, delta, None)
        yield chunk(index, {}, choice.get("finish_reason") or "stop")
    if include_usage:
        yield _event({**head, "choices": [], "usage": completion.get("usage")})
    yield DONE
