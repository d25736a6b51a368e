"""The thin client end to end: a real agent (real Secret Service, real socket) and a real
devserver, every bad-input hook mapped to its documented exception with nothing retried that
must not be, and a rotated router key refused before anything is sent."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
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


NOT_A_PACKAGE = (
    "the router's answer is not a valid encrypted package",
    "is the base URL a NOMYO router? the answer was dropped unread",
)
DOWNGRADE = (
    "the router's package is refused",
    "a downgrade is refused; update the client if the router really moved on",
)
UNOPENED = (
    "the router's answer could not be decrypted or authenticated",
    "the answer was not sealed to this identity, or it was altered in transit",
)


@pytest.mark.parametrize(
    ("hook", "named"),
    [
        ("garbage", NOT_A_PACKAGE),
        ("truncated", NOT_A_PACKAGE),
        ("bad-tag", UNOPENED),
        ("other-recipient", UNOPENED),
        ("bad-version", DOWNGRADE),
        ("bad-algorithm", DOWNGRADE),
    ],
)
def test_bad_packages_are_security_errors_not_retried(
    ready_agent: RunningAgent, router: DevServer, hook: str, named: tuple[str, str]
) -> None:
    # The agent alone parses the answer; when it cannot open it, the client names a structural
    # defect (public) the way it did when it parsed the package itself.
    sleeps = Sleeps()
    with pytest.raises(nc.SecurityError) as info:
        chat(make(ready_agent, router, sleeps), model=f"devserver/{hook}")
    assert not isinstance(info.value, nc.RouterKeyChangedError)
    assert info.value.message.startswith(named[0])
    assert info.value.hint == named[1]
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


def test_stopped_agent_fails_the_request_at_its_timeout(
    ready_agent: RunningAgent, router: DevServer
) -> None:
    # A hung agent (here SIGSTOPped) must not hang the app: each agent call obeys the
    # request's timeout, on a connection already open and on a fresh one.
    async def go() -> list[float]:
        elapsed = []
        async with make(ready_agent, router, timeout=2) as warm:
            assert (await warm.create(model="devserver/echo", messages=PROMPT))["choices"]
            os.kill(ready_agent.pid, signal.SIGSTOP)
            try:
                for client in (warm, make(ready_agent, router, timeout=2)):
                    started = time.monotonic()
                    with pytest.raises(nc.AgentUnavailableError) as info:
                        await client.create(model="devserver/echo", messages=PROMPT)
                    elapsed.append(time.monotonic() - started)
                    assert info.value.message == (
                        f"the agent at {ready_agent.path} did not answer within 2 s"
                    )
                    assert "timeout=" in (info.value.hint or "")
                    await client.aclose()
            finally:
                os.kill(ready_agent.pid, signal.SIGCONT)
            # Once it runs again, the same client works again.
            assert (await warm.create(model="devserver/echo", messages=PROMPT))["choices"]
        return elapsed

    elapsed = asyncio.run(go())
    assert all(1.9 < e < 4.0 for e in elapsed), elapsed
    assert ready_agent.status().state == "unlocked"


def agent_sockets(agent: RunningAgent) -> int:
    """Sockets the agent process holds open (its listener, its clients, its D-Bus link...)."""
    count = 0
    for fd in Path(f"/proc/{agent.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            count += os.readlink(fd).startswith("socket:")
    return count


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)  # let this loop run the closing it scheduled
    return True


def test_512_clients_never_closed_share_one_agent_connection(
    ready_agent: RunningAgent, router: DevServer
) -> None:
    # Code ported from the public client (which has no close()) makes a client per request and
    # never closes it: every one of them must share one agent connection, and the last one to
    # go away releases it.
    baseline = agent_sockets(ready_agent)

    async def go() -> tuple[int, int, str]:
        clients = []
        for _ in range(512):
            client = make(ready_agent, router)
            assert (await client.create(model="devserver/echo", messages=PROMPT))["choices"]
            clients.append(client)
        held = agent_sockets(ready_agent) - baseline
        status = await asyncio.to_thread(ready_agent.cli, "status")
        gc.disable()  # released as soon as the last client goes, not at some later collection
        del clients, client
        await wait_for(lambda: agent_sockets(ready_agent) == baseline)
        return held, agent_sockets(ready_agent) - baseline, status.stdout

    try:
        held, left, status = asyncio.run(go())
    finally:
        gc.enable()
    assert held == 1
    assert left == 0
    assert "unlocked" in status
    assert ready_agent.status().counters.opens == 512


def test_blocking_clients_never_closed_share_one_connection_and_one_thread(
    ready_agent: RunningAgent, router: DevServer
) -> None:
    def loop_threads() -> int:
        return sum(t.name == "nomyo-client-loop" for t in threading.enumerate())

    baseline = agent_sockets(ready_agent)
    clients = []
    for _ in range(64):
        client = SyncSecureChatCompletion(
            router.url, allow_http=True, agent_socket=ready_agent.path, autostart=False
        )
        assert client.create(model="devserver/echo", messages=PROMPT)["choices"]
        clients.append(client)
    assert agent_sockets(ready_agent) - baseline == 1
    assert loop_threads() == 1  # the process's one loop thread
    del clients, client
    deadline = time.monotonic() + 10
    while agent_sockets(ready_agent) != baseline and time.monotonic() < deadline:
        time.sleep(0.01)  # the loop thread closes it: nothing to await from this thread
    assert agent_sockets(ready_agent) == baseline
