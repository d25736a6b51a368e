"""nomyo-proxy's pure parts, no processes: the SSE replay of a completion, the Host parsing, the
mapping of client errors to statuses, the token store's file and its "last used" resolution,
the choice of server stack."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import nomyo_client as nc
from nomyo_proxy import TokenError, TokenStore
from nomyo_proxy._checks import host_name
from nomyo_proxy._cli import loop_factory
from nomyo_proxy._errors import ConfigError, for_client_error
from nomyo_proxy._listen import is_loopback, split_listen
from nomyo_proxy._protocol import http_protocol
from nomyo_proxy._stream import DONE, sse_events

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 7,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi",
                                 "reasoning_content": "think"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         "finish_reason": "tool_calls"},
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}  # fmt: skip


def events(include_usage: bool) -> list[dict[str, object]]:
    raw = list(sse_events(COMPLETION, include_usage))
    assert raw[-1] == DONE
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in raw)
    return [json.loads(e[6:]) for e in raw[:-1]]


def test_a_completion_replays_as_openai_chunks_in_order() -> None:
    chunks = events(include_usage=False)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["id"] == "chatcmpl-1" and c["created"] == 7 for c in chunks)
    deltas = [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
              for c in chunks]  # type: ignore[index]  # fmt: skip
    assert deltas == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"reasoning_content": "think"}, None),
        (0, {"content": "hi"}, None),
        (0, {}, "stop"),
        (1, {"role": "assistant", "content": ""}, None),
        (1, {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                             "function": {"name": "f", "arguments": "{}"}}]}, None),
        (1, {}, "tool_calls"),
    ]  # fmt: skip
    assert all("usage" not in c for c in chunks)


def test_include_usage_adds_null_usage_and_a_last_chunk_with_the_usage() -> None:
    chunks = events(include_usage=True)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == COMPLETION["usage"]


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost", "localhost"),
        ("LocalHost:12480", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:12480", "::1"),
        ("[::1]", "::1"),
        ("localhost.", "localhost"),
        ("evil.example:12480", "evil.example"),
        ("[::1", ""),
        ("", ""),
    ],
)
def test_host_name(header: str, host: str) -> None:
    assert host_name(header) == host


def test_listen_addresses() -> None:
    assert split_listen("127.0.0.1:12480") == ("127.0.0.1", 12480)
    assert split_listen("[::1]:0") == ("::1", 0)
    for bad in ("12480", "host:port", "127.0.0.1:99999"):
        with pytest.raises(ConfigError):
            split_listen(bad)
    assert is_loopback("127.0.0.2")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("my-laptop.local")  # a name may resolve anywhere


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (nc.AgentLockedError("locked"), 503, "agent_locked"),
        (nc.AgentUnavailableError("none"), 503, "agent_unavailable"),
        (nc.NoIdentityError("none"), 503, "no_identity"),
        (nc.RouterKeyChangedError("changed", origin="o", fingerprint="f", hint="h"), 502,
         "router_key_changed"),
        (nc.SecurityError("bad tag"), 502, "security_error"),
        (nc.APIConnectionError("down"), 502, "router_unreachable"),
        (nc.AuthenticationError("no"), 502, "router_authentication_failed"),
        (nc.RateLimitError("slow"), 429, "rate_limited"),
        (nc.InvalidRequestError("bad"), 400, None),
        (nc.ForbiddenError("tier"), 403, "router_403"),
        (nc.ServerError("boom"), 500, "router_500"),
        (nc.ServiceUnavailableError("busy"), 503, "router_503"),
        (nc.APIError("odd", status_code=418), 502, "router_502"),
    ],
)  # fmt: skip
def test_client_errors_map_to_the_status_an_openai_sdk_expects(
    error: nc.APIError, status: int, code: str | None
) -> None:
    answer = for_client_error(error)
    assert (answer.status, answer.code) == (status, code)
    body = json.loads(answer.body())["error"]
    assert set(body) == {"message", "type", "param", "code"}


def test_retry_after_is_passed_on_in_whole_seconds() -> None:
    error = nc.RateLimitError("slow")
    error.retry_after = 1.2
    assert for_client_error(error).headers == ((b"retry-after", b"2"),)
    assert for_client_error(nc.RateLimitError("slow")).headers == ()


def test_the_locked_answer_says_how_to_unlock() -> None:
    assert "nomyo-agent unlock" in json.loads(for_client_error(nc.AgentLockedError("x")).body())[
        "error"]["message"]  # fmt: skip


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_store_keeps_hashes_and_last_use_to_the_minute(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state" / "proxy-tokens.json"
    store = TokenStore(path, clock)
    token = store.create("editor")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert token not in path.read_text()
    assert store.check(token) == "editor"
    assert store.check(token + "x") is None
    assert store.check("sk-" + token) is None
    assert store.list()["editor"].last_used == 1000.0
    before = path.stat().st_mtime_ns
    clock.now += 59
    assert store.check(token) == "editor"
    assert path.stat().st_mtime_ns == before  # not rewritten within the minute
    clock.now += 2
    store.check(token)
    assert TokenStore(path).list()["editor"].last_used == 1061.0
    for bad in ("", "-x", "a b", "x" * 65, "é"):
        with pytest.raises(TokenError, match="invalid token name"):
            store.create(bad)
    with pytest.raises(TokenError, match="exists already"):
        store.create("editor")
    store.revoke("editor")
    assert store.check(token) is None
    with pytest.raises(TokenError, match="no token named"):
        store.revoke("editor")


def test_the_serving_proxy_records_a_use_off_the_request(tmp_path: Path) -> None:
    """Recording a use is a locked rewrite with an fsync: the proxy hands it to a thread
    (``background``) and answers at once; the file has it once that write has run."""
    clock = Clock()
    path = tmp_path / "proxy-tokens.json"
    token = TokenStore(path, clock).create("editor")
    later: list[Callable[[], None]] = []
    store = TokenStore(path, clock, background=later.append)
    before = path.stat().st_mtime_ns
    assert store.check(token) == "editor"
    assert store.check(token) == "editor"  # the same minute: one write, not two
    assert len(later) == 1
    assert path.stat().st_mtime_ns == before  # nothing written yet
    later.pop()()
    assert TokenStore(path).list()["editor"].last_used == 1000.0
    assert store.check(token) == "editor"  # the checking store reads the new file
    assert later == []
    TokenStore(path).revoke("editor")
    clock.now += 120
    assert store.check(token) is None  # a revoke is seen at the next request, as before


def test_a_corrupt_token_file_is_an_error_never_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "proxy-tokens.json"
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(TokenError, match="cannot read the token file"):
        TokenStore(path).list()


def test_the_server_stack_is_the_fast_one_where_installed() -> None:
    import uvloop
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(http_protocol("auto", 5), HttpToolsProtocol)
    assert issubclass(http_protocol("h11", 5), H11Protocol)
    assert http_protocol("h11", 5).head_timeout == 5  # type: ignore[attr-defined]
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None  # asyncio's own loop


def test_a_token_revoked_while_the_proxy_records_a_use_stays_revoked(tmp_path: Path) -> None:
    """The proxy rewrites the file to record a use; a revoke by ``nomyo-proxy token revoke``
    landing between its read and its write must not be undone by that write. The clock the proxy
    reads between the two is where the other process's revoke is made to land."""
    path = tmp_path / "proxy-tokens.json"
    cli = TokenStore(path)
    editor, script = cli.create("editor"), cli.create("script")
    revoked: list[str] = []

    def clock() -> float:
        if not revoked:
            TokenStore(path).revoke("script")  # the other process, mid-update
            revoked.append("script")
        return 1000.0

    proxy = TokenStore(path, clock)
    assert proxy.check(editor) == "editor"
    assert revoked == ["script"]
    assert sorted(TokenStore(path).list()) == ["editor"]
    assert proxy.check(script) is None


def test_a_token_created_while_the_proxy_records_a_use_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "proxy-tokens.json"
    editor = TokenStore(path).create("editor")
    created: list[str] = []

    def clock() -> float:
        if not created:
            created.append(TokenStore(path).create("script"))
        return 1000.0

    proxy = TokenStore(path, clock)
    assert proxy.check(editor) == "editor"
    assert proxy.check(created[0]) == "script"
    assert TokenStore(path).list()["editor"].last_used == 1000.0
