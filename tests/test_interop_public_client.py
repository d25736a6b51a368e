"""The public ``nomyo==0.2.9`` client, which nobody here wrote, against ``nomyo-devserver``.

It completes chats (plain, with parameters, with tools, with each security tier, with an API
key, over HTTPS), and every error status of PROTOCOL.md's table maps to its exception class.
The echo model is deterministic, so each answer is compared field by field with what the echo
model computes for the request the public client must have sent: ids, choices and usage match.
Most chats run in one peer process (a module-scoped batch) to keep this file fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nomyo_devserver._echo import completion
from support.devserver import KeyPool, RunningDevServer, start_devserver
from support.peer import chat_op, run_peer, run_public_client

pytestmark = pytest.mark.slow  # a real peer interpreter; about 8 s for the whole file

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CHATS: dict[str, dict[str, Any]] = {
    "plain": {"model": "m", "messages": MESSAGES},
    "params": {
        "model": "m",
        "messages": MESSAGES,
        "temperature": 0.3,
        "max_tokens": 3,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "stop": ["zz"],
        "n": 2,
        "user": "u-1",
        "seed": 7,
    },
    "tools": {"model": "m", "messages": MESSAGES, "tools": [WEATHER], "tool_choice": "auto"},
    "tier-standard": {"model": "m", "messages": MESSAGES, "security_tier": "standard"},
    "tier-high": {"model": "m", "messages": MESSAGES, "security_tier": "high"},
    "tier-maximum": {"model": "m", "messages": MESSAGES, "security_tier": "maximum"},
}
# PROTOCOL.md's table: status -> the public client's exception class.
STATUSES = {
    401: "AuthenticationError",
    403: "ForbiddenError",
    404: "APIError",
    429: "RateLimitError",
    500: "ServerError",
    502: "APIError",
    503: "ServiceUnavailableError",
    504: "APIError",
    507: "APIError",
}
# What 0.2.9 actually raises for a broken answer (see test_broken_answers for the surprises).
BROKEN = {
    "bad-tag": "SecurityError",
    "other-recipient": "APIConnectionError",
    "truncated": "APIConnectionError",
    "garbage": "APIConnectionError",
    "bad-version": "APIConnectionError",
    "bad-algorithm": "APIConnectionError",
    "drop": "APIConnectionError",
    "html-500": "ServerError",
}


def expected_answer(chat: dict[str, Any]) -> dict[str, Any]:
    """The echo model's answer to the payload the public client builds for ``chat``."""
    payload = {k: v for k, v in chat.items() if k not in ("security_tier", "api_key", "base_url")}
    return completion(payload)


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, devserver_key_pool: KeyPool
) -> Iterator[RunningDevServer]:
    server = start_devserver(tmp_path_factory.mktemp("interop"), devserver_key_pool)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def outcomes(router: RunningDevServer) -> dict[str, dict[str, Any]]:
    """Every batched chat's outcome, by name, from one run of the public client."""
    named: dict[str, dict[str, Any]] = dict(CHATS)
    for status in STATUSES:
        named[f"status-{status}"] = {"model": f"devserver/status-{status}", "messages": MESSAGES}
    for hook in BROKEN:
        named[hook] = {"model": f"devserver/{hook}", "messages": MESSAGES}
    named["stream"] = {"model": "m", "messages": MESSAGES, "stream": True}
    results = run_peer([chat_op(router.url, **dict(chat)) for chat in named.values()])
    outcomes = dict(zip(named, results, strict=True))
    print(json.dumps(outcomes, indent=1)[:20000])  # shown with -s: the answers, for comparison
    return outcomes


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def response_of(outcome: dict[str, Any]) -> dict[str, Any]:
    assert "response" in outcome, outcome.get("error")
    response: dict[str, Any] = outcome["response"]
    return response


@pytest.mark.parametrize("name", list(CHATS))
def test_chats_complete_with_the_expected_answer(
    outcomes: dict[str, dict[str, Any]], name: str
) -> None:
    response = response_of(outcomes[name])
    expected = expected_answer(CHATS[name])
    for key in ("id", "object", "created", "model", "choices", "usage"):
        assert response[key] == expected[key], key
    meta = response["_metadata"]
    assert meta["is_encrypted"] is True
    assert meta["encryption_algorithm"] == "hybrid-aes256-rsa4096"
    assert meta["response_status"] == "success"
    assert isinstance(meta["processed_at"], float)
    assert len(meta["payload_id"]) == 36  # its X-Payload-ID, a UUID4 string
    assert meta["security_tier"] == CHATS[name].get("security_tier", "standard")


def test_parameters_reach_the_model(outcomes: dict[str, dict[str, Any]]) -> None:
    response = response_of(outcomes["params"])
    assert [c["index"] for c in response["choices"]] == [0, 1]  # n=2
    assert response["choices"][0]["finish_reason"] == "length"  # max_tokens=3
    assert response["choices"][0]["message"]["content"] == "echo: What is"


def test_tool_call(outcomes: dict[str, dict[str, Any]]) -> None:
    choice = response_of(outcomes["tools"])["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "What is the capital of France?"}


@pytest.mark.parametrize("status", list(STATUSES))
def test_error_statuses_map_to_the_documented_exceptions(
    outcomes: dict[str, dict[str, Any]], status: int
) -> None:
    error = outcomes[f"status-{status}"]["error"]
    assert error["type"] == STATUSES[status]
    assert "APIError" in error["mro"]
    assert error["status_code"] == status
    assert "test hook" in error["message"] or status == 507


def test_stream_is_refused_with_400(outcomes: dict[str, dict[str, Any]]) -> None:
    error = outcomes["stream"]["error"]
    assert error["type"] == "InvalidRequestError"
    assert error["status_code"] == 400
    assert "streaming is not supported" in error["message"]


@pytest.mark.parametrize("hook", list(BROKEN))
def test_broken_answers(outcomes: dict[str, dict[str, Any]], hook: str) -> None:
    # Facts about 0.2.9, not wishes: only a failed tag is a SecurityError. A package it cannot
    # parse or whose version it refuses raises ValueError inside, which its request loop turns
    # into APIConnectionError("... unexpected error"); so does a wrong key (cryptography raises
    # ValueError from OAEP) and a dropped connection (httpx.RemoteProtocolError is not a
    # NetworkError, so it is not retried either).
    assert outcomes[hook]["error"]["type"] == BROKEN[hook]


def test_one_chat_costs_it_a_key_fetch_and_two_connections(devserver: RunningDevServer) -> None:
    before = devserver.stats()
    outcome = run_public_client(devserver.url, **CHATS["plain"])
    assert response_of(outcome)["id"] == expected_answer(CHATS["plain"])["id"]
    delta = stats_delta(before, devserver.stats())
    assert delta["key_fetches"] == 1
    assert delta["completions"] == 1
    assert delta["connections"] == 2 + 1  # its key fetch and its POST; plus our stats call


def test_api_key(make_devserver: Callable[..., RunningDevServer]) -> None:
    server = make_devserver(api_key="sk-right")
    results = run_peer(
        [
            chat_op(server.url, api_key="sk-right", **CHATS["plain"]),
            chat_op(server.url, api_key="sk-wrong", **CHATS["plain"]),
            chat_op(server.url, **CHATS["plain"]),
        ]
    )
    assert response_of(results[0])["id"] == expected_answer(CHATS["plain"])["id"]
    for failed in results[1:]:
        assert failed["error"]["type"] == "AuthenticationError"
        assert failed["error"]["status_code"] == 401
        assert failed["error"]["message"] == "invalid or missing API key"


def test_retries_reuse_the_payload_and_stop_on_400(devserver: RunningDevServer) -> None:
    flaky = {"model": "devserver/flaky-503-1", "messages": MESSAGES}
    bad = {"model": "devserver/status-400", "messages": MESSAGES}
    invalid_tier = {**CHATS["plain"], "security_tier": "ultra"}
    before = devserver.stats()
    results = run_peer(
        [
            chat_op(devserver.url, max_retries=1, **flaky),
            chat_op(devserver.url, max_retries=2, **bad),
            chat_op(devserver.url, **invalid_tier),
        ]
    )
    # flaky-503-1 fails the first attempt of each X-Payload-ID: the retry succeeds only
    # because it resends the same id (and the same package), after its 1 s backoff.
    assert response_of(results[0])["choices"][0]["message"]["content"].startswith("echo: ")
    assert results[0]["elapsed"] >= 1.0
    assert results[1]["error"]["type"] == "InvalidRequestError"
    assert results[2]["error"]["type"] == "ValueError"  # refused before anything is sent
    delta = stats_delta(before, devserver.stats())
    assert delta["status_503"] == 1
    assert delta["status_400"] == 1  # 400 is not retried
    assert delta["completions"] == 1
    assert delta["key_fetches"] == 2  # one per create(), none per retry


def test_https_with_a_trusted_certificate(
    make_devserver: Callable[..., RunningDevServer], devserver_tls: Any
) -> None:
    server = make_devserver(tls=True)
    assert server.url.startswith("https://")
    outcome = run_public_client(
        server.url, env={"SSL_CERT_FILE": str(Path(devserver_tls.ca))}, **CHATS["tier-high"]
    )
    response = response_of(outcome)
    assert response["id"] == expected_answer(CHATS["tier-high"])["id"]
    assert response["_metadata"]["security_tier"] == "high"


def test_an_oversized_body_is_a_413_it_reports_as_api_error(
    make_devserver: Callable[..., RunningDevServer],
) -> None:
    server = make_devserver(max_body=256 * 1024)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    error = run_public_client(server.url, max_retries=2, **big)["error"]
    assert (error["type"], error["status_code"]) == ("APIError", 413)
    assert "over this router's 262144" in error["message"]
    assert server.stats()["status_413"] == 1  # not retried
