"""nomyo-proxy against the official ``openai`` Python SDK: a real proxy process, a real agent
(real Secret Service) and a real devserver behind it. Sync and async, streaming and not, tools,
``n``, every error class the issue names, the SDK's retries off and on, and attribution."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from support.agent import RunningAgent
from support.devserver import RunningDevServer
from support.proxy import RunningProxy

PROMPT = [{"role": "user", "content": "hello through the proxy"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def proxy(
    ready_agent: RunningAgent,
    devserver: RunningDevServer,
    make_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    return make_proxy(ready_agent, devserver, "--model", "devserver/echo")


def client(proxy: RunningProxy, key: str, **kw: object) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=proxy.url, api_key=key, **kw)  # type: ignore[arg-type]


def test_sync_chat_through_proxy_agent_and_router(proxy: RunningProxy) -> None:
    with client(proxy, proxy.token("editor")) as oa:
        answer = oa.chat.completions.create(
            model="devserver/echo",
            messages=PROMPT,
            temperature=0.2,  # type: ignore[arg-type]
        )
    assert answer.object == "chat.completion"
    assert "hello through the proxy" in (answer.choices[0].message.content or "")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None


def test_async_stream_with_usage_ends_like_openai(proxy: RunningProxy) -> None:
    token = proxy.token("chat-ui")

    async def go() -> list[openai.types.chat.ChatCompletionChunk]:
        async with openai.AsyncOpenAI(base_url=proxy.url, api_key=token, max_retries=0) as oa:
            stream = await oa.chat.completions.create(
                model="devserver/echo",
                messages=PROMPT,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(go())
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "hello through the proxy" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0


def test_sync_stream_without_usage(proxy: RunningProxy) -> None:
    with client(proxy, proxy.token("t")) as oa:
        stream = oa.chat.completions.create(
            model="devserver/echo",
            messages=PROMPT,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tools_and_n_reach_the_router_and_come_back(proxy: RunningProxy) -> None:
    with client(proxy, proxy.token("t")) as oa:
        answer = oa.chat.completions.create(
            model="devserver/echo",
            messages=PROMPT,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="auto",
            n=2,
        )
        streamed = list(
            oa.chat.completions.create(
                model="devserver/echo",
                messages=PROMPT,  # type: ignore[arg-type]
                tools=TOOLS,  # type: ignore[arg-type]
                n=2,
                stream=True,
            )
        )
    assert [c.index for c in answer.choices] == [0, 1]
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "hello through the proxy"}  # type: ignore[union-attr]
    assert {c.index for s in streamed for c in s.choices} == {0, 1}
    streamed_calls = [
        d for s in streamed for c in s.choices if c.index == 1 for d in c.delta.tool_calls or ()
    ]
    assert streamed_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert streamed_calls[0].id.startswith("call_")  # type: ignore[union-attr]
    finish = [c.finish_reason for s in streamed for c in s.choices if c.finish_reason]
    assert finish == ["tool_calls", "tool_calls"]


# --- errors, as the SDK raises them ----------------------------------------------------------


def error_body(exc: openai.APIStatusError) -> dict[str, object]:
    body = exc.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body  # type: ignore[no-any-return]


def test_bad_or_missing_token_is_an_authentication_error(proxy: RunningProxy) -> None:
    proxy.token("real")
    for key in ("nmyp_not-a-real-token", "sk-anything"):
        with client(proxy, key) as oa, pytest.raises(openai.AuthenticationError) as info:
            oa.chat.completions.create(model="devserver/echo", messages=PROMPT)  # type: ignore[arg-type]
        assert error_body(info.value)["code"] == "invalid_api_key"
    missing = httpx.post(f"{proxy.url}/chat/completions", json={"model": "m", "messages": []})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"


def test_router_429_passes_through_with_retry_after(
    proxy: RunningProxy, devserver: RunningDevServer
) -> None:
    with client(proxy, proxy.token("t")) as oa, pytest.raises(openai.RateLimitError) as info:
        oa.chat.completions.create(model="devserver/status-429-after-7", messages=PROMPT)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "7"
    assert devserver.stats()["status_429"] == 1  # the proxy itself did not retry
    # A streaming request gets the same error answer, not an event stream: routers answer whole,
    # so the proxy knows the outcome before it starts a stream.
    with client(proxy, proxy.token("s")) as oa, pytest.raises(openai.RateLimitError):
        oa.chat.completions.create(
            model="devserver/status-429-after-7",
            messages=PROMPT,
            stream=True,  # type: ignore[arg-type]
        )


def test_security_tier_reaches_the_router_as_its_header(proxy: RunningProxy) -> None:
    with client(proxy, proxy.token("t")) as oa:
        answer = oa.chat.completions.create(
            model="devserver/echo",
            messages=PROMPT,
            extra_body={"security_tier": "high"},  # type: ignore[arg-type]
        )
        assert answer.model_extra is not None
        assert answer.model_extra["_metadata"]["security_tier"] == "high"
        with pytest.raises(openai.BadRequestError):
            oa.chat.completions.create(
                model="devserver/echo",
                messages=PROMPT,
                extra_body={"security_tier": "ultra"},  # type: ignore[arg-type]
            )


def test_sdk_retries_off_and_on(proxy: RunningProxy, devserver: RunningDevServer) -> None:
    token = proxy.token("t")
    with client(proxy, token) as oa, pytest.raises(openai.InternalServerError) as info:
        oa.chat.completions.create(model="devserver/status-503", messages=PROMPT)  # type: ignore[arg-type]
    assert info.value.status_code == 503
    assert devserver.stats()["status_503"] == 1  # retries off: one attempt
    with client(proxy, token, max_retries=2) as oa, pytest.raises(openai.RateLimitError):
        oa.chat.completions.create(model="devserver/status-429-after-0", messages=PROMPT)  # type: ignore[arg-type]
    assert devserver.stats()["status_429"] == 3  # retries on: the SDK's, not the proxy's


def test_locked_agent_is_503_saying_how_to_unlock(
    proxy: RunningProxy, ready_agent: RunningAgent, devserver: RunningDevServer
) -> None:
    ready_agent.cli("lock")
    with client(proxy, proxy.token("t")) as oa, pytest.raises(openai.APIStatusError) as info:
        oa.chat.completions.create(model="devserver/echo", messages=PROMPT)  # type: ignore[arg-type]
    assert info.value.status_code == 503
    body = error_body(info.value)
    assert body["code"] == "agent_locked"
    assert "nomyo-agent unlock" in str(body["message"])
    assert devserver.stats().get("completions", 0) == 0


def test_no_agent_is_503(proxy: RunningProxy, ready_agent: RunningAgent) -> None:
    token = proxy.token("t")
    ready_agent.stop()
    with client(proxy, token) as oa, pytest.raises(openai.APIStatusError) as info:
        oa.chat.completions.create(model="devserver/echo", messages=PROMPT)  # type: ignore[arg-type]
    assert info.value.status_code == 503
    assert error_body(info.value)["code"] == "agent_unavailable"


def test_changed_router_key_is_502_with_the_pins_accept_hint(
    proxy: RunningProxy, ready_agent: RunningAgent, devserver: RunningDevServer
) -> None:
    with client(proxy, proxy.token("t")) as oa:
        oa.chat.completions.create(model="devserver/echo", messages=PROMPT)  # type: ignore[arg-type]
        devserver.rotate_key()
        with pytest.raises(openai.APIStatusError) as info:
            oa.chat.completions.create(model="devserver/echo", messages=PROMPT)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    body = error_body(info.value)
    assert body["code"] == "router_key_changed"
    assert f"nomyo-agent pins accept {devserver.url}" in str(body["message"])
    # Nothing was sealed to the new key: the router decrypted only the first request.
    assert devserver.stats()["completions"] == 1
    ready_agent.cli("pins", "accept", devserver.url)
    with client(proxy, proxy.token("t2")) as oa:
        assert oa.chat.completions.create(model="devserver/echo", messages=PROMPT).choices  # type: ignore[arg-type]


def test_invalid_request_is_400_and_unknown_path_404(proxy: RunningProxy) -> None:
    with client(proxy, proxy.token("t")) as oa:
        with pytest.raises(openai.BadRequestError) as info:
            oa.chat.completions.create(model="devserver/echo", messages="not a list")  # type: ignore[arg-type]
        assert error_body(info.value)["param"] == "messages"
        with pytest.raises(openai.BadRequestError):
            oa.chat.completions.create(
                model="devserver/echo",
                messages=PROMPT,
                extra_body={"base_url": "http://x"},  # type: ignore[arg-type]
            )
        with pytest.raises(openai.NotFoundError):
            oa.embeddings.create(model="x", input="y")


def test_models_lists_the_configured_names_when_the_router_has_none(proxy: RunningProxy) -> None:
    with client(proxy, proxy.token("t")) as oa:
        assert [m.id for m in oa.models.list()] == ["devserver/echo"]


# --- attribution -----------------------------------------------------------------------------


def test_token_name_shows_in_agent_status_and_audit_log(
    proxy: RunningProxy, ready_agent: RunningAgent
) -> None:
    with client(proxy, proxy.token("editor")) as oa:
        oa.chat.completions.create(model="devserver/echo", messages=PROMPT)  # type: ignore[arg-type]
    with client(proxy, proxy.token("notebook")) as oa:
        oa.chat.completions.create(model="devserver/echo", messages=PROMPT)  # type: ignore[arg-type]
    recent = [c.exe for c in ready_agent.status().recent_clients]
    assert recent[:2] == ["nomyo-proxy: notebook", "nomyo-proxy: editor"]
    assert "nomyo-proxy: editor" in ready_agent.cli("status").stdout
    audit = Path(ready_agent.env["XDG_STATE_HOME"]) / "nomyo-agent" / "audit.log"
    apps = [json.loads(line).get("app") for line in audit.read_text().splitlines()]
    assert [a for a in apps if a] == ["nomyo-proxy: editor", "nomyo-proxy: notebook"]
    listed = proxy.cli("token", "list").stdout
    assert "editor\t" in listed
    assert "nmyp_" not in listed


# --- latency ---------------------------------------------------------------------------------


def test_keep_alive_answers_are_not_held_back_by_nagle(proxy: RunningProxy) -> None:
    # With Nagle's algorithm on the accepted sockets, each answer after the first on a keep-alive
    # connection (headers and body are two writes) waited for the client's delayed ACK: ~40 ms
    # each, measured 44 ms; without it, well under 1 ms. 20 answers must take far less than 0.8 s.
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        http.get("/models")  # connect once; the rest reuse the connection
        started = time.perf_counter()
        for _ in range(20):
            assert http.get("/models").status_code == 401
        elapsed = time.perf_counter() - started
    assert elapsed < 0.4, f"20 keep-alive answers took {elapsed * 1000:.0f} ms"
