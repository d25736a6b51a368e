"""nomyo-proxy refuses what it must, with real processes and real sockets: a foreign ``Host``
(DNS rebinding), a browser ``Origin``, a revoked token, a non-loopback bind without
``--allow-remote`` (and without TLS), an oversized or slow body (without holding up others);
and it keeps what it must: tokens only as hashes in a 0600 file, no ``cryptography`` loaded."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support.agent import RunningAgent
from support.devserver import RunningDevServer
from support.proxy import RunningProxy, proxy_cli, proxy_env

BODY = {"model": "devserver/echo", "messages": [{"role": "user", "content": "hi"}]}


# Every refusal holds on both server stacks: the default (httptools' parser, uvloop) and the
# pure-Python one it falls back to where those are not installed (h11, asyncio's loop).
STACKS = {"default": (), "pure-python": ("--http", "h11", "--loop", "asyncio")}


@pytest.fixture(params=sorted(STACKS))
def proxy(
    request: pytest.FixtureRequest,
    ready_agent: RunningAgent,
    devserver: RunningDevServer,
    make_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    return make_proxy(
        ready_agent,
        devserver,
        "--allow-origin",
        "http://localhost:5173",
        "--request-timeout",
        "2",
        *STACKS[request.param],
    )


def post(proxy: RunningProxy, token: str, **kw: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.post(
        f"{proxy.url}/chat/completions",
        json=BODY,
        headers=headers,
        timeout=30,
        **kw,  # type: ignore[arg-type]
    )


def test_a_foreign_host_header_is_refused(proxy: RunningProxy, devserver: RunningDevServer) -> None:
    token = proxy.token("t")
    for host in ("attacker.example", "attacker.example:12480", "127.0.0.1.nip.io"):
        refused = post(proxy, token, headers={"Host": host})
        assert refused.status_code == 403, host
        assert refused.json()["error"]["code"] == "host_not_allowed"
    for host in ("localhost", "127.0.0.1", "LOCALHOST.:1"):
        assert post(proxy, token, headers={"Host": host}).status_code == 200, host
    assert devserver.stats()["completions"] == 3


def test_a_browser_origin_is_refused_without_cors_headers(proxy: RunningProxy) -> None:
    token = proxy.token("t")
    refused = post(proxy, token, headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "origin_not_allowed"
    assert not any(h.startswith("access-control-") for h in refused.headers)
    preflight = httpx.options(
        f"{proxy.url}/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    allowed = post(proxy, token, headers={"Origin": "http://localhost:5173"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_a_revoked_token_is_refused_by_the_running_proxy(proxy: RunningProxy) -> None:
    token = proxy.token("laptop-app")
    assert post(proxy, token).status_code == 200
    proxy.cli("token", "revoke", "laptop-app")
    refused = post(proxy, token)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_tokens_are_stored_only_as_hashes_in_a_private_file(proxy: RunningProxy) -> None:
    token = proxy.token("editor")
    assert token.startswith("nmyp_")
    assert len(token) > 40
    path = Path(proxy.env["XDG_STATE_HOME"]) / "nomyo-agent" / "proxy-tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    assert token[5:] not in text
    assert set(json.loads(text)) == {"editor"}
    again = proxy.cli("token", "create", "editor", check=False)
    assert again.returncode == 1
    assert "exists already" in again.stderr
    assert again.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "0.0.0.0:0"], "not a loopback address"),
        (["--listen", "[::]:0"], "not a loopback address"),
        (["--listen", "0.0.0.0:0", "--allow-remote"], "--allow-remote needs --tls-cert"),
    ],
)
def test_a_non_loopback_bind_is_refused(
    ready_agent: RunningAgent, devserver: RunningDevServer, args: list[str], message: str
) -> None:
    done = proxy_cli(
        proxy_env(ready_agent), "serve", "--router", devserver.url, "--allow-http", *args,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert message in done.stderr
    assert "hint:" in done.stderr
    assert "NOMYO_PROXY_URL" not in done.stdout


def test_an_oversized_body_is_refused_before_it_is_read(proxy: RunningProxy) -> None:
    token = proxy.token("t")
    huge = b'{"model": "m", "messages": [], "pad": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    refused = httpx.post(
        f"{proxy.url}/chat/completions",
        content=huge,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert refused.status_code == 413


def test_a_slow_body_times_out_without_holding_up_others(proxy: RunningProxy) -> None:
    token = proxy.token("t")
    host, port = proxy.url.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
    slow = socket.create_connection((host, int(port)))
    slow.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model"'
    )
    answers: list[int] = []
    others = [threading.Thread(target=lambda: answers.append(post(proxy, token).status_code))
              for _ in range(3)]  # fmt: skip
    for t in others:
        t.start()
    for t in others:
        t.join(timeout=30)
    assert answers == [200, 200, 200]  # served while the slow body still hangs
    slow.settimeout(15)
    reply = b""
    while chunk := slow.recv(4096):  # the answer, then the proxy closes the connection
        reply += chunk
    slow.close()
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within 2 s" in reply


def test_the_stack_is_the_one_asked_for(
    proxy: RunningProxy, request: pytest.FixtureRequest
) -> None:
    assert post(proxy, proxy.token("t")).status_code == 200
    maps = Path(f"/proc/{proxy.process.pid}/maps").read_text()
    fast = "pure-python" not in request.node.callspec.id
    assert ("/uvloop/" in maps) is fast
    assert ("/httptools/" in maps) is fast


def test_the_proxy_never_loads_cryptography(proxy: RunningProxy, ready_agent: RunningAgent) -> None:
    assert post(proxy, proxy.token("t")).status_code == 200
    # cryptography's Rust extension shows in a process's memory map once imported: the agent
    # (the positive control) has it, the proxy, having served a request, must not.
    assert "/cryptography/" in Path(f"/proc/{ready_agent.pid}/maps").read_text()
    maps = Path(f"/proc/{proxy.process.pid}/maps").read_text()
    assert "/cryptography/" not in maps
    assert "_cffi_backend" not in maps


def test_a_slow_request_head_is_cut_off_without_holding_up_others(proxy: RunningProxy) -> None:
    # uvicorn alone keeps a connection whose head never completes open for good.
    token = proxy.token("t")
    host, port = proxy.url.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
    slow = socket.create_connection((host, int(port)))
    slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: loc")
    assert post(proxy, token).status_code == 200
    slow.settimeout(15)
    assert slow.recv(4096) == b""  # closed by the proxy after --request-timeout (2 s)
    slow.close()
    idle = socket.create_connection((host, int(port)))  # connects, never sends a byte
    idle.settimeout(15)
    assert idle.recv(4096) == b""
    idle.close()
