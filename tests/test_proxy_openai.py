"""nomyo-proxy against the official ``openai`` Python SDK: a real proxy process, a real agent
(real Secret Service) and a real devserver behind it. Sync and async, streaming and not, tools,
``n``, every error class the issue names, the SDK's retries off and on, and attribution."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

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
def ready_agent(agent: RunningAgent) -> RunningAgent:
    agent.keygen(bits=2048)
    return agent


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
            model="devserver/echo", messages=PROMPT, temperature=0.2  # type: ignore[arg-type]
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
            model="devserver/echo", messages=PROMPT, stream=True  # type: ignore[arg-type]
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
    assert streamed_calls[0].id == call.id
    finish = [c.finish_reason for s in streamed for c in s.choices if c.finish_reason]
    assert finish == ["tool_calls", "tool_calls"]
