"""nomyo-proxy against peers in other languages: ``curl`` and the official ``openai`` npm
package under Node (installed by ``./dev setup`` from tests/node/package-lock.json with
``npm ci``). A chat, a stream, a 401 each."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from support.agent import RunningAgent
from support.devserver import RunningDevServer
from support.proxy import RunningProxy

NODE_DIR = Path(__file__).parent / "node"
BODY = {"model": "devserver/echo", "messages": [{"role": "user", "content": "hello from curl"}]}


@pytest.fixture
def proxy(
    agent: RunningAgent, devserver: RunningDevServer, make_proxy: Callable[..., RunningProxy]
) -> RunningProxy:
    agent.keygen(bits=2048)
    return make_proxy(agent, devserver)


def curl(proxy: RunningProxy, token: str, body: dict[str, object]) -> tuple[int, str]:
    if shutil.which("curl") is None:
        pytest.fail("curl is missing: install it (apt-get install curl)", pytrace=False)
    done = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "-w", "\n%{http_code}", f"{proxy.url}/chat/completions",
         "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
         "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    text, _, status = done.stdout.rpartition("\n")
    return int(status), text


def test_curl_chat_stream_and_401(proxy: RunningProxy) -> None:
    token = proxy.token("curl")
    status, text = curl(proxy, token, BODY)
    assert status == 200
    assert "hello from curl" in json.loads(text)["choices"][0]["message"]["content"]
    status, text = curl(proxy, token, {**BODY, "stream": True})
    assert status == 200
    events = [line for line in text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).count("curl")
    status, text = curl(proxy, "nmyp_wrong", BODY)
    assert status == 401
    assert json.loads(text)["error"]["code"] == "invalid_api_key"


def test_openai_npm_package_chat_stream_and_401(proxy: RunningProxy) -> None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.fail(
            "the openai npm package is not installed in tests/node: install Node.js 20+ with "
            "npm, then run `./dev setup` (it runs `npm ci` there)",
            pytrace=False,
        )
    done = subprocess.run(
        ["node", str(NODE_DIR / "peer.mjs"), proxy.url, proxy.token("node-app")],
        capture_output=True, text=True, timeout=120, check=False, cwd=NODE_DIR,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert "hello from node" in seen["chat"]
    assert "hello from node" in seen["streamed"]
    assert seen["usage"]["total_tokens"] > 0
    assert seen["badStatus"] == 401
    assert seen["badClass"] == "AuthenticationError"
