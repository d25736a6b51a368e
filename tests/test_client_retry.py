"""Retries, backoff and the mapping of every bad answer to its documented exception, with an
injected sleep and clock (no test waits) and a MockTransport router in front of a fake agent."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

import nomyo_client as nc
from nomyo_client import RetryPolicy, SecureChatCompletion
from nomyo_client._retry import parse_retry_after
from nomyo_client._wire import error_for_status
from support.client_fakes import (
    OUR_PEM,
    ROUTER_PEM,
    FakeAgent,
    FakeRouter,
    fake_seal,
)

MESSAGES = [{"role": "user", "content": "hi"}]
NOW = 1_800_000_000.0


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make(agent: FakeAgent, router: FakeRouter, sleeps: Sleeps, retries: int = 2) -> Any:
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
    fake_agent: FakeAgent, status: int, error: type[nc.APIError]
) -> None:
    router, sleeps = FakeRouter(script=[status] * 3), Sleeps()
    with pytest.raises(error) as info:
        create(make(fake_agent, router, sleeps))
    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.error_details == {"detail": f"scripted {status}"}
    assert len(router.posts) == 3
    assert sleeps == [0.75, 1.5]  # 1 s then 2 s, times the jitter factor 0.75
    assert fake_agent.ops().count("Seal") == 1  # sealed once, the same package resent
    assert len({r.headers["x-payload-id"] for r in router.posts}) == 1


def test_recovers_after_transient_failures(fake_agent: FakeAgent) -> None:
    router, sleeps = FakeRouter(script=[503, 429]), Sleeps()
    assert create(make(fake_agent, router, sleeps))["choices"]
    assert len(router.posts) == 3


def test_retry_after_is_honoured(fake_agent: FakeAgent) -> None:
    def limited(_: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "4"}, json={"detail": "slow"})

    router, sleeps = FakeRouter(script=[limited, limited, limited]), Sleeps()
    with pytest.raises(nc.RateLimitError) as info:
        create(make(fake_agent, router, sleeps))
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
    fake_agent: FakeAgent, status: int, error: type[nc.APIError]
) -> None:
    router, sleeps = FakeRouter(script=[status]), Sleeps()
    with pytest.raises(error) as info:
        create(make(fake_agent, router, sleeps))
    assert type(info.value) is error
    assert info.value.status_code == status
    assert len(router.posts) == 1
    assert sleeps == []


def test_html_error_page_maps_by_status(fake_agent: FakeAgent) -> None:
    def html(_: httpx.Request) -> httpx.Response:
        return httpx.Response(500, html="<html><body>Internal Server Error</body></html>")

    router, sleeps = FakeRouter(script=[html] * 3), Sleeps()
    with pytest.raises(nc.ServerError) as info:
        create(make(fake_agent, router, sleeps))
    assert info.value.message == "the router failed (HTTP 500)"
    assert info.value.error_details is None
    assert len(router.posts) == 3


def test_network_errors_retried_then_api_connection_error(fake_agent: FakeAgent) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("server disconnected", request=request)

    router, sleeps = FakeRouter(script=[refuse, drop, refuse]), Sleeps()
    with pytest.raises(nc.APIConnectionError, match="after 3 attempts") as info:
        create(make(fake_agent, router, sleeps))
    assert isinstance(info.value, ConnectionError)  # as the public client's callers expect
    assert len(router.posts) == 3
    assert len(sleeps) == 2


def test_read_timeout_not_retried(fake_agent: FakeAgent) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    router, sleeps = FakeRouter(script=[slow]), Sleeps()
    with pytest.raises(nc.APIConnectionError, match="in time"):
        create(make(fake_agent, router, sleeps))
    assert len(router.posts) == 1


def test_max_retries_zero(fake_agent: FakeAgent) -> None:
    router, sleeps = FakeRouter(script=[503]), Sleeps()
    with pytest.raises(nc.ServiceUnavailableError):
        create(make(fake_agent, router, sleeps, retries=0))
    assert len(router.posts) == 1


def _answer(body: bytes, status: int = 200) -> Any:
    return lambda _request: httpx.Response(status, content=body)


def _completion() -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()


BAD_ANSWERS = {
    "garbage": b"\x00\xffnot json at all",
    "truncated": fake_seal(_completion(), OUR_PEM)[:80],
    "missing-tag": json.dumps({
        **json.loads(fake_seal(_completion(), OUR_PEM)),
        "encrypted_payload": {"ciphertext": "AA==", "nonce": "AA=="},
    }).encode(),
    "bad-version": fake_seal(_completion(), OUR_PEM, version="0.9"),
    "bad-algorithm": fake_seal(_completion(), OUR_PEM, algorithm="hybrid-aes128-rsa1024"),
    "other-recipient": fake_seal(_completion(), ROUTER_PEM),
    "bad-tag": fake_seal(
        _completion(), OUR_PEM,
        encrypted_payload={
            **json.loads(fake_seal(_completion(), OUR_PEM))["encrypted_payload"],
            "tag": base64.b64encode(bytes(16)).decode(),
        },
    ),
    "not-an-object": fake_seal(b"[1, 2]", OUR_PEM),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_answers_are_security_errors_and_not_retried(fake_agent: FakeAgent, case: str) -> None:
    router, sleeps = FakeRouter(script=[_answer(BAD_ANSWERS[case])]), Sleeps()
    with pytest.raises(nc.SecurityError) as info:
        create(make(fake_agent, router, sleeps))
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
