"""Large answers: every answer within the client's 64 MiB cap opens through the agent; beyond it,
one documented error (``ResponseTooLargeError``), never a raw frame error, never "could not reach
the router" (the router did answer), and nothing resent."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

import nomyo_client as nc
from nomyo_client import RetryPolicy, SecureChatCompletion
from nomyo_devserver import DevServer
from support.agent import RunningAgent

MiB = 1024 * 1024


def ask(
    agent: RunningAgent, server: DevServer, prompt: str, n: int, *, use_httpx: bool = False
) -> dict[str, Any]:
    async def no_sleep(_: float) -> None:
        return None

    async def go() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            http = (
                await stack.enter_async_context(httpx.AsyncClient(timeout=60))
                if use_httpx
                else None
            )
            client = SecureChatCompletion(
                server.url, allow_http=True, agent_socket=agent.path, autostart=False,
                retry=RetryPolicy(max_retries=2, sleep=no_sleep), http_client=http,
            )  # fmt: skip
            async with client:
                return await client.create(
                    model="devserver/echo", messages=[{"role": "user", "content": prompt}], n=n
                )
        raise AssertionError("unreachable")

    return asyncio.run(go())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("prompt_mib", "n"), [(9, 3), (1, 30)], ids=["9MiB-prompt-38MB-answer", "n30-1MiB-prompt"]
)
def test_answers_over_the_old_frame_cap_open(
    agent: RunningAgent, router: DevServer, prompt_mib: int, n: int
) -> None:
    agent.keygen(bits=2048)
    prompt = "a" * (prompt_mib * MiB - 1024)
    answer = ask(agent, router, prompt, n)
    contents = [c["message"]["content"] for c in answer["choices"]]
    assert len(contents) == n
    assert all(c == f"echo: {prompt}" for c in contents)
    # Sealed, the answer was over the old 32 MiB frame cap: base64 of the JSON plaintext.
    assert sum(map(len, contents)) * 4 // 3 > 32 * MiB
    assert agent.status().counters.opens == 1


@pytest.mark.slow
@pytest.mark.parametrize("use_httpx", [False, True], ids=["own-pool", "httpx"])
def test_an_answer_over_the_cap_is_one_documented_error_and_not_resent(
    agent: RunningAgent, router: DevServer, use_httpx: bool
) -> None:
    agent.keygen(bits=2048)
    with pytest.raises(nc.ResponseTooLargeError) as info:
        ask(agent, router, "a" * (MiB - 1024), 60, use_httpx=use_httpx)
    assert not isinstance(info.value, nc.APIConnectionError)
    assert "64 MiB cap" in info.value.message
    assert "could not reach" not in info.value.message
    assert info.value.max_bytes == 64 * MiB
    assert router.stats()["completions"] == 1  # the router acted once: nothing was resent
    assert agent.status().counters.opens == 0
