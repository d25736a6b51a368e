"""The built-in echo model: a deterministic OpenAI ``chat.completion`` for any request.

Rules of this module:

- Same request, same answer, whichever client sent it: ``id`` and ``created`` derive from a
  digest of the request's JSON with sorted keys (so key order and whitespace do not matter),
  nothing from the clock or a random source. That is what lets tests compare the answers the
  public client and ours get for the same chat.
- The content is ``"echo: "`` plus the text of the last user message. When ``tools`` are given
  and ``tool_choice`` is not ``"none"``, the answer is a call to the first tool (or the one
  ``tool_choice`` names) with arguments filled from its JSON schema; after a ``tool`` message
  it answers in text, so tool loops end.
- ``max_tokens``, ``stop`` and ``n`` act as a model would apply them (a "token" is a word), so
  tests can see those parameters arrive. ``usage`` counts words.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

__all__ = ["completion", "request_digest"]

_MAX_N = 128  # OpenAI's own limit for n; large n makes large answers for the size tests
_encoder = msgspec.json.Encoder(order="sorted")


def request_digest(request: dict[str, Any]) -> str:
    """SHA-256 hex of the request as JSON with sorted keys."""
    return hashlib.sha256(_encoder.encode(request)).hexdigest()


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def _words(text: str) -> int:
    return len(text.split())


def _chosen_tool(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    if not isinstance(tools, list) or not tools or tool_choice == "none":
        return None
    functions: list[dict[str, Any]] = [
        t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if not functions:
        return None
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        for function in functions:
            if function.get("name") == wanted:
                return function
    return functions[0]


def _arguments(function: dict[str, Any], text: str) -> dict[str, Any]:
    """Schema-shaped arguments: strings get the user's text, other types a neutral value."""
    schema = function.get("parameters")
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return {}
    properties: dict[str, Any] = schema["properties"]
    required = schema.get("required")
    names = required if isinstance(required, list) and required else list(properties)
    neutral = {"integer": 0, "number": 0, "boolean": False, "array": [], "object": {}, "null": None}
    arguments: dict[str, Any] = {}
    for name in names:
        spec = properties.get(name) if isinstance(name, str) else None
        if not isinstance(spec, dict):
            continue
        if isinstance(spec.get("enum"), list) and spec["enum"]:
            arguments[name] = spec["enum"][0]
        else:
            arguments[name] = neutral.get(str(spec.get("type")), text)
    return arguments


def _apply_limits(content: str, request: dict[str, Any]) -> tuple[str, str]:
    """Cut at the first stop sequence, then at ``max_tokens`` words; returns (text, reason)."""
    stops = request.get("stop")
    stops = [stops] if isinstance(stops, str) else stops if isinstance(stops, list) else []
    reason = "stop"
    for stop in stops:
        if isinstance(stop, str) and stop and stop in content:
            content = content[: content.index(stop)]
    limit = request.get("max_tokens", request.get("max_completion_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        words = content.split(" ")
        if len(words) > limit:
            content, reason = " ".join(words[:limit]), "length"
    return content, reason


def completion(request: dict[str, Any]) -> dict[str, Any]:
    """The echo model's ``chat.completion`` for a validated request (model, messages)."""
    digest = request_digest(request)
    messages: list[Any] = request["messages"]
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    user_texts = [
        _text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"
    ]
    user_text = user_texts[-1] if user_texts else ""
    prompt_tokens = sum(_words(_text(m.get("content"))) for m in messages if isinstance(m, dict))

    tool = (
        None
        if last.get("role") == "tool"
        else _chosen_tool(request.get("tools"), request.get("tool_choice"))
    )
    n = request.get("n")
    count = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= _MAX_N else 1
    choices = []
    completion_tokens = 0
    for index in range(count):
        message: dict[str, Any] = {"role": "assistant"}
        if tool is not None:
            arguments = _encoder.encode(_arguments(tool, user_text)).decode()
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_{digest[:24]}",
                    "type": "function",
                    "function": {"name": tool.get("name", ""), "arguments": arguments},
                }
            ]
            reason = "tool_calls"
            completion_tokens += _words(arguments)
        else:
            if last.get("role") == "tool":
                content = f"echo: tool result: {_text(last.get('content'))}"
            else:
                content = f"echo: {user_text}"
            message["content"], reason = _apply_limits(content, request)
            completion_tokens += _words(message["content"])
        choices.append({"index": index, "message": message, "finish_reason": reason})
    return {
        "id": f"chatcmpl-devserver-{digest[:24]}",
        "object": "chat.completion",
        "created": 1_700_000_000 + int(digest[24:32], 16) % 100_000_000,
        "model": request["model"],
        "system_fingerprint": "nomyo-devserver-echo",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
