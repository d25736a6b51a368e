"""The thin client end to end: a real agent (real Secret Service, real socket) and a real
devserver, every bad-input hook mapped to its documented exception with nothing retried that
must not be, and a rotated router key refused before anything is sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import nomyo_client as nc
from nomyo_client import RetryPolicy, SecureChatCompletion, SyncSecureChatCompletion
from nomyo_devserver import DevServer
from support.agent import RunningAgent

PROMPT = [{"role": "user", "content": "hello through the agent"}]


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def router() -> Iterator[DevServer]:
    with DevServer(key_bits=2048) as server:
        yield server


@pytest.fixture
def ready_agent(agent: RunningAgent) -> RunningAgent:
    agent.keygen(bits=2048)
    return agent


def make(agent: RunningAgent, server: DevServer, sleeps: Sleeps | None = None, **kw: Any) -> Any:
    policy = RetryPolicy(
        max_retries=2, sleep=Sleeps() if sleeps is None else sleeps, random=lambda: 0.5
    )
    return SecureChatCompletion(
        server.url, allow_http=True, agent_socket=agent.path, autostart=False, retry=policy, **kw
    )


def chat(client: SecureChatCompletion, model: str = "devserver/echo", **kw: Any) -> Any:
    async def go() -> Any:
        async with client:
            return await client.create(model=model, messages=PROMPT, **kw)

    return asyncio.run(go())


def test_encrypted_chat_through_agent_and_devserver(
    ready_agent: RunningAgent, router: DevServer
) -> None:
    async def go() -> list[dict[str, Any]]:
        async with make(ready_agent, router) as client:
            first = await client.create(model="devserver/echo", messages=PROMPT, top_p=0.5)
            rest = await asyncio.gather(
                *(client.create(model="devserver/echo", messages=PROMPT) for _ in range(8))
            )
            return [first, *rest]

    answers = asyncio.run(go())
    assert all("hello through the agent" in a["choices"][0]["message"]["content"] for a in answers)
    meta = answers[0]["_metadata"]
    assert meta["is_encrypted"] is True
    assert meta["encryption_algorithm"] == "hybrid-aes256-rsa4096"
    assert meta["router"] == "nomyo-devserver"
    assert isinstance(meta["processed_at"], (int, float))
    stats = router.stats()
    assert stats["key_fetches"] == 1
    assert stats["completions"] == 9
    assert ready_agent.status().counters.opens == 9


@pytest.mark.parametrize(
    "hook",
    ["garbage", "truncated", "bad-tag", "other-recipient", "bad-version", "bad-algorithm"],
)
def test_bad_packages_are_security_errors_not_retried(
    ready_agent: RunningAgent, router: DevServer, hook: str
) -> None:
    sleeps = Sleeps()
    with pytest.raises(nc.SecurityError) as info:
        chat(make(ready_agent, router, sleeps), model=f"devserver/{hook}")
    assert not isinstance(info.value, nc.RouterKeyChangedError)
    assert router.stats()["completions"] == 1  # one attempt, no retry
    assert sleeps == []


def test_html_500_is_a_server_error_after_retries(
    ready_agent: RunningAgent, router: DevServer
) -> None:
    sleeps = Sleeps()
    with pytest.raises(nc.ServerError, match=r"^the router failed \(HTTP 500\)$"):
        chat(make(ready_agent, router, sleeps), model="devserver/html-500")
    assert router.stats()["status_500"] == 3
    assert sleeps == [0.375, 0.75]


@pytest.mark.parametrize("http", ["own", "httpx"])
def test_router_that_read_the_request_and_hung_up_gets_it_once(
    ready_agent: RunningAgent, router: DevServer, http: str
) -> None:
    # devserver/drop decrypts the package, then closes the connection without answering: the
    # router may have acted on it, so it must not see (and decrypt) it a second time.
    sleeps = Sleeps()

    async def go() -> None:
        given = httpx.AsyncClient() if http == "httpx" else None
        async with make(ready_agent, router, sleeps, http_client=given) as client:
            with pytest.raises(nc.APIConnectionError) as info:
                await client.create(model="devserver/drop", messages=PROMPT)
        if given is not None:
            await given.aclose()
        assert info.value.message.startswith("the router closed the connection before answering")
        assert "could not reach" not in info.value.message
        assert "not resent" in (info.value.hint or "")

    asyncio.run(go())
    assert router.stats()["dropped"] == 1
    assert sleeps == []


def test_retry_after_and_recovery(ready_agent: RunningAgent, router: DevServer) -> None:
    sleeps = Sleeps()
    with pytest.raises(nc.RateLimitError) as info:
        chat(make(ready_agent, router, sleeps), model="devserver/status-429-after-2")
    assert sleeps == [2.0, 2.0]
    assert info.value.retry_after == 2.0
    sleeps.clear()
    answer = chat(make(ready_agent, router, sleeps), model="devserver/flaky-503-2")
    assert answer["choices"][0]["message"]["content"]
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, nc.InvalidRequestError), (401, nc.AuthenticationError), (403, nc.ForbiddenError),
     (404, nc.APIError)],
)  # fmt: skip
def test_final_statuses_are_not_retried(
    ready_agent: RunningAgent, router: DevServer, status: int, error: type[nc.APIError]
) -> None:
    with pytest.raises(error) as info:
        chat(make(ready_agent, router), model=f"devserver/status-{status}")
    assert info.value.status_code == status
    assert router.stats()[f"status_{status}"] == 1


def test_api_key_and_tier(ready_agent: RunningAgent) -> None:
    with DevServer(key_bits=2048, api_key="sk-test") as server:
        with pytest.raises(nc.AuthenticationError):
            chat(make(ready_agent, server))
        answer = chat(make(ready_agent, server, api_key="sk-test"), security_tier="maximum")
    assert answer["_metadata"]["security_tier"] == "maximum"


def test_rotated_router_key_is_refused_and_nothing_is_sent(
    ready_agent: RunningAgent, router: DevServer
) -> None:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async def go() -> None:
        http = httpx.AsyncClient(event_hooks={"request": [record]})
        async with make(ready_agent, router, http_client=http) as client:
            await client.create(model="devserver/echo", messages=PROMPT)
            router.rotate_key()
            with pytest.raises(nc.RouterKeyChangedError) as info:
                await client.create(model="devserver/echo", messages=PROMPT)
            assert info.value.origin == router.url
            assert f"nomyo-agent pins accept {router.url}" in (info.value.hint or "")
        await http.aclose()

    asyncio.run(go())
    posts = [r for r in sent if r.method == "POST"]
    # The stale-key request got its 400, the key was fetched again, the agent refused it: no
    # request was ever sealed to the new, unaccepted key.
    assert len(posts) == 2
    assert router.stats()["completions"] == 1
    assert router.stats()["key_fetches"] == 2

    ready_agent.cli("pins", "accept", router.url)
    assert chat(make(ready_agent, router))["choices"]


def test_locked_agent(ready_agent: RunningAgent, router: DevServer) -> None:
    ready_agent.cli("lock")
    with pytest.raises(nc.AgentLockedError) as info:
        chat(make(ready_agent, router))
    assert "nomyo-agent unlock" in (info.value.hint or "")
    assert router.stats().get("completions", 0) == 0


def test_no_identity(agent: RunningAgent, router: DevServer) -> None:
    with pytest.raises(nc.NoIdentityError) as info:
        chat(make(agent, router))
    assert "nomyo-agent keygen" in (info.value.hint or "")


def test_sync_client(ready_agent: RunningAgent, router: DevServer) -> None:
    with SyncSecureChatCompletion(
        router.url, allow_http=True, agent_socket=ready_agent.path, autostart=False
    ) as client:
        answers = [client.create(model="devserver/echo", messages=PROMPT) for _ in range(3)]
    assert all(a["choices"][0]["message"]["content"] for a in answers)
    assert router.stats()["key_fetches"] == 1
    assert router.stats()["connections"] == 1
