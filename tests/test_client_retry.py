"""Retries, backoff and the mapping of every bad answer to its documented exception, with an
injected sleep and clock (no test waits) and a scripted MockTransport router in front of the real
agent (its core behind a real socket, ``support.client_fakes``)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

import nomyo_client as nc
from nomyo_agent import _envelope, _keys
from nomyo_client import RetryPolicy, SecureChatCompletion
from nomyo_client._answer import error_for_status
from nomyo_client._retry import parse_retry_after
from support.client_fakes import LiveAgent
from support.scripted_router import ROUTER_PEM, ScriptedRouter

MESSAGES = [{"role": "user", "content": "hi"}]
NOW = 1_800_000_000.0


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make(agent: LiveAgent, router: ScriptedRouter, sleeps: Sleeps, retries: int = 2) -> Any:
    policy = RetryPolicy(
        max_retries=retries, base_delay=1.0, sleep=sleeps, clock=lambda: NOW, random=lambda: 0.5
    )
    return SecureChatCompletion(
        "https://router.test", http_client=router.client(), agent_socket=agent.path,
        autostart=False, retry=policy,
    )  # fmt: skip


def create(client: SecureChatCompletion) -> Any:
    return asyncio.run(client.create(model="m", messages=MESSAGES))


def test_backoff_doubles_with_jitter_and_caps() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0, random=lambda: 0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    high = RetryPolicy(base_delay=0.5, random=lambda: 0.999)
    assert 0.49 < high.delay(1) < 0.5
    assert policy.delay(1, retry_after=7.0) == 7.0
    assert policy.delay(1, retry_after=3600.0) == 0.25  # absurd Retry-After: own backoff


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after({"retry-after": "3"}, NOW) == 3.0
    date = format_datetime(datetime.fromtimestamp(NOW + 5, tz=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": date}, NOW) == pytest.approx(5.0)
    assert parse_retry_after({"retry-after": "soon"}, NOW) is None
    assert parse_retry_after({}, NOW) is None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, nc.RateLimitError),
        (500, nc.ServerError),
        (502, nc.APIError),
        (503, nc.ServiceUnavailableError),
        (504, nc.APIError),
    ],
)
def test_transient_statuses_retried_then_raised(
    live_agent: LiveAgent, status: int, error: type[nc.APIError]
) -> None:
    router, sleeps = ScriptedRouter(script=[status] * 3), Sleeps()
    with pytest.raises(error) as info:
        create(make(live_agent, router, sleeps))
    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.error_details == {"detail": f"scripted {status}"}
    assert len(router.posts) == 3
    assert sleeps == [0.75, 1.5]  # 1 s then 2 s, times the jitter factor 0.75
    assert live_agent.counters.seals == 1  # sealed once, the same package resent
    assert len({r.headers["x-payload-id"] for r in router.posts}) == 1


def test_recovers_after_transient_failures(live_agent: LiveAgent) -> None:
    router, sleeps = ScriptedRouter(script=[503, 429]), Sleeps()
    assert create(make(live_agent, router, sleeps))["choices"]
    assert len(router.posts) == 3


def test_retry_after_is_honoured(live_agent: LiveAgent) -> None:
    def limited(_: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "4"}, json={"detail": "slow"})

    router, sleeps = ScriptedRouter(script=[limited, limited, limited]), Sleeps()
    with pytest.raises(nc.RateLimitError) as info:
        create(make(live_agent, router, sleeps))
    assert sleeps == [4.0, 4.0]
    assert info.value.retry_after == 4.0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, nc.InvalidRequestError),
        (401, nc.AuthenticationError),
        (403, nc.ForbiddenError),
        (404, nc.APIError),
        (418, nc.APIError),
    ],
)
def test_final_statuses_not_retried(
    live_agent: LiveAgent, status: int, error: type[nc.APIError]
) -> None:
    router, sleeps = ScriptedRouter(script=[status]), Sleeps()
    with pytest.raises(error) as info:
        create(make(live_agent, router, sleeps))
    assert type(info.value) is error
    assert info.value.status_code == status
    assert len(router.posts) == 1
    assert sleeps == []


def test_html_error_page_maps_by_status(live_agent: LiveAgent) -> None:
    def html(_: httpx.Request) -> httpx.Response:
        return httpx.Response(500, html="<html><body>Internal Server Error</body></html>")

    router, sleeps = ScriptedRouter(script=[html] * 3), Sleeps()
    with pytest.raises(nc.ServerError) as info:
        create(make(live_agent, router, sleeps))
    assert info.value.message == "the router failed (HTTP 500)"
    assert info.value.error_details is None
    assert len(router.posts) == 3


def test_refused_connections_retried_then_api_connection_error(live_agent: LiveAgent) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    router, sleeps = ScriptedRouter(script=[refuse, refuse, refuse]), Sleeps()
    with pytest.raises(nc.APIConnectionError, match=r"^could not reach .* 3 attempts") as info:
        create(make(live_agent, router, sleeps))
    assert isinstance(info.value, ConnectionError)  # as the public client's callers expect
    assert len(router.posts) == 3
    assert len(sleeps) == 2


def test_connection_dropped_after_sending_is_not_resent(live_agent: LiveAgent) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("server disconnected", request=request)

    router, sleeps = ScriptedRouter(script=[refuse, drop, refuse]), Sleeps()
    with pytest.raises(nc.APIConnectionError) as info:
        create(make(live_agent, router, sleeps))
    assert info.value.message.startswith("the router closed the connection before answering")
    assert len(router.posts) == 2  # the refused one was retried, the dropped one was final
    assert len(sleeps) == 1


def test_read_timeout_not_retried(live_agent: LiveAgent) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    router, sleeps = ScriptedRouter(script=[slow]), Sleeps()
    with pytest.raises(nc.APIConnectionError, match="in time"):
        create(make(live_agent, router, sleeps))
    assert len(router.posts) == 1


def test_max_retries_zero(live_agent: LiveAgent) -> None:
    router, sleeps = ScriptedRouter(script=[503]), Sleeps()
    with pytest.raises(nc.ServiceUnavailableError):
        create(make(live_agent, router, sleeps, retries=0))
    assert len(router.posts) == 1


def _answer(body: bytes, status: int = 200) -> Any:
    return lambda _request: httpx.Response(status, content=body)


def _completion() -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()


def _sealed(recipient_pem: str, plaintext: bytes, **overrides: Any) -> bytes:
    """A real package sealed to ``recipient_pem``, with top-level fields overridden."""
    recipient = _keys.load_router_key(recipient_pem)
    package = json.loads(_envelope.seal(recipient, plaintext))
    package.update(overrides)
    return json.dumps(package).encode()


def _zero_tag(ours: str) -> bytes:
    package = json.loads(_sealed(ours, _completion()))
    package["encrypted_payload"]["tag"] = base64.b64encode(bytes(16)).decode()
    return json.dumps(package).encode()


# Each bad answer, made for the agent's public key (``ours``).
BAD_ANSWERS: dict[str, Callable[[str], bytes]] = {
    "garbage": lambda ours: b"\x00\xffnot json at all",
    "truncated": lambda ours: _sealed(ours, _completion())[:80],
    "missing-tag": lambda ours: _sealed(
        ours, _completion(), encrypted_payload={"ciphertext": "AA==", "nonce": "AA=="}
    ),
    "bad-version": lambda ours: _sealed(ours, _completion(), version="0.9"),
    "bad-algorithm": lambda ours: _sealed(ours, _completion(), algorithm="hybrid-aes128-rsa1024"),
    "other-recipient": lambda ours: _sealed(ROUTER_PEM, _completion()),
    "bad-tag": _zero_tag,
    "not-an-object": lambda ours: _sealed(ours, b"[1, 2]"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_answers_are_security_errors_and_not_retried(live_agent: LiveAgent, case: str) -> None:
    identity = live_agent.core.state.info
    assert identity is not None
    bad = BAD_ANSWERS[case](identity.public_key_pem)
    router, sleeps = ScriptedRouter(script=[_answer(bad)]), Sleeps()
    with pytest.raises(nc.SecurityError) as info:
        create(make(live_agent, router, sleeps))
    assert info.value.message.startswith("the router")
    assert len(router.posts) == 1
    assert sleeps == []


def test_error_for_status_details() -> None:
    err = error_for_status(403, b'{"detail": "model not allowed for tier maximum"}')
    assert isinstance(err, nc.ForbiddenError)
    assert err.message == "the router refused access (HTTP 403): model not allowed for tier maximum"
    assert err.error_details == {"detail": "model not allowed for tier maximum"}
    odd = error_for_status(400, b'{"detail": [{"loc": ["body"], "msg": "bad"}]}')
    assert "bad" in odd.message
    assert error_for_status(599, b"").status_code == 599


def test_exception_attributes_as_in_the_seed() -> None:
    for cls, status in [
        (nc.InvalidRequestError, 400), (nc.AuthenticationError, 401), (nc.ForbiddenError, 403),
        (nc.RateLimitError, 429), (nc.ServerError, 500), (nc.ServiceUnavailableError, 503),
    ]:  # fmt: skip
        err = cls("boom")
        assert isinstance(err, nc.APIError)
        assert (err.message, err.status_code, err.error_details, str(err)) == (
            "boom",
            status,
            None,
            "boom",
        )
    for cls in (nc.APIConnectionError, nc.SecurityError, nc.AgentError, nc.AgentLockedError,
                nc.AgentUnavailableError, nc.NoIdentityError, nc.AgentProtocolError):  # fmt: skip
        err = cls("boom")
        assert isinstance(err, nc.APIError)
        assert err.status_code is None
        assert err.hint is None or err.hint.islower() or err.hint[0].islower()
