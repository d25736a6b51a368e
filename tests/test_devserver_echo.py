"""The devserver's echo model and test-hook names, as pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomyo_devserver._echo import completion, request_digest
from nomyo_devserver._hooks import Hook, parse_hook

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit", "days"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def req(text: str = "hello world", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def content(result: dict[str, Any], index: int = 0) -> Any:
    return result["choices"][index]["message"]["content"]


def test_shape_and_usage() -> None:
    result = completion(req(messages_extra=1))
    assert result["object"] == "chat.completion"
    assert result["id"].startswith("chatcmpl-devserver-")
    assert 1_700_000_000 <= result["created"] < 1_800_000_000
    assert result["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "echo: hello world"},
            "finish_reason": "stop",
        }
    ]
    assert result["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=5))
def test_deterministic_whatever_the_key_order(extra: dict[str, int]) -> None:
    a = {**req(), **{f"x{k}": v for k, v in extra.items()}}
    b = dict(reversed(list(a.items())))
    assert completion(a) == completion(b)
    assert request_digest(a) == request_digest(json.loads(json.dumps(b, indent=3)))


def test_the_last_user_message_and_content_parts() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "echo: first"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
    ]
    assert content(completion({"model": "m", "messages": messages})) == "echo: second"
    assert content(completion({"model": "m", "messages": []})) == "echo: "


def test_max_tokens_stop_and_n() -> None:
    cut = completion(req("one two three four", max_tokens=2))
    assert content(cut) == "echo: one"
    assert cut["choices"][0]["finish_reason"] == "length"
    stopped = completion(req("one two three", stop=[" three", "x"]))
    assert content(stopped) == "echo: one two"
    assert stopped["choices"][0]["finish_reason"] == "stop"
    several = completion(req(n=3))
    assert [c["index"] for c in several["choices"]] == [0, 1, 2]
    assert several["usage"]["completion_tokens"] == 9


def test_tool_call_to_the_first_tool_with_schema_shaped_arguments() -> None:
    result = completion(req("Paris", tools=[WEATHER, TIME]))
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {
        "city": "Paris",
        "unit": "celsius",
        "days": 0,
    }


def test_tool_choice_none_named_and_after_a_tool_result() -> None:
    assert content(completion(req(tools=[WEATHER], tool_choice="none"))) == "echo: hello world"
    named = completion(
        req(
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    )
    assert named["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "get_time",
        "arguments": "{}",
    }
    loop = req(tools=[WEATHER])
    loop["messages"] += [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c", "content": "sunny"},
    ]
    assert content(completion(loop)) == "echo: tool result: sunny"


@pytest.mark.parametrize(
    ("model", "hook"),
    [
        ("llama3", None),
        ("devserver/echo", Hook("echo")),
        ("devserver/status-404", Hook("status", status=404)),
        ("devserver/status-429-after-2", Hook("status", status=429, retry_after=2)),
        ("devserver/flaky-503-2", Hook("flaky", status=503, times=2)),
        ("devserver/slow-250", Hook("slow", delay=0.25)),
        ("devserver/drop", Hook("drop")),
        ("devserver/bad-tag", Hook("bad-tag")),
    ],
)
def test_hook_names(model: str, hook: Hook | None) -> None:
    assert parse_hook(model) == hook


@pytest.mark.parametrize(
    "model",
    [
        "devserver/",
        "devserver/status-200",
        "devserver/status-5000",
        "devserver/slow-",
        "devserver/slow-700000",
        "devserver/Drop",
    ],
)
def test_unknown_hook_names_are_errors(model: str) -> None:
    with pytest.raises(ValueError, match="unknown test hook"):
        parse_hook(model)
