"""nomyo-devserver forwarding to an OpenAI-compatible upstream.

No llama.cpp, Ollama or vLLM can run here (no network, no model weights), so the upstream is a
small real HTTP server that speaks their ``/v1/chat/completions`` the way they do: JSON in,
a ``chat.completion`` or an OpenAI-style ``{"error": {"message": ...}}`` out.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent._envelope import open_package, seal
from nomyo_agent._keys import load_router_key, public_pem
from nomyo_devserver import DevServer
from nomyo_devserver._upstream import endpoint_of
from support.keys import rsa_key


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received: ClassVar[list[tuple[str, dict[str, str], Any]]] = []
    mode: ClassVar[str] = "ok"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, content_type, data = 200, "application/json", b""
        if self.mode == "ok":
            data = json.dumps(
                {
                    "id": "chatcmpl-upstream",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "from upstream",
                                "reasoning_content": "thinking",
                            },
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                }
            ).encode()
        elif self.mode == "429":
            status, data = 429, b'{"error": {"message": "slow down", "type": "rate_limit"}}'
        elif self.mode == "text500":
            status, content_type, data = 500, "text/plain", b"model crashed"
        elif self.mode == "notjson":
            content_type, data = "text/plain", b"hello"
        elif self.mode == "slow":
            time.sleep(1.0)
            data = b"{}"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    _Upstream.received = []
    _Upstream.mode = "ok"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return tuple(  # type: ignore[return-value]
        rsa_key(2048, i) for i in range(2)
    )


def call(
    server: DevServer, client_key: rsa.RSAPrivateKey, request: dict[str, Any]
) -> tuple[int, Any]:
    body = seal(load_router_key(server.public_key_pem), json.dumps(request).encode())
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Payload-ID": str(uuid.uuid4()),
        "X-Public-Key": urllib.parse.quote(public_pem(client_key.public_key())),
    }
    with httpx.Client(timeout=20, trust_env=False) as http:
        response = http.post(
            f"{server.url}/v1/chat/secure_completion", content=body, headers=headers
        )
    if response.status_code != 200:
        return response.status_code, response.json()["detail"]
    return 200, json.loads(open_package(client_key, response.content).plaintext)


REQUEST = {
    "model": "llama3.2:1b",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.2,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
}


def test_requests_are_forwarded_as_sent_and_answers_relayed(
    upstream: str, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    router_key, client_key = keys
    with DevServer(key=router_key, upstream=upstream, upstream_api_key="up-key") as server:
        status, result = call(server, client_key, REQUEST)
    assert status == 200
    [(path, headers, body)] = _Upstream.received
    assert path == "/v1/chat/completions"
    assert body == REQUEST  # every parameter passed through unchanged
    assert headers["authorization"] == "Bearer up-key"
    assert result["id"] == "chatcmpl-upstream"
    assert result["choices"][0]["message"]["reasoning_content"] == "thinking"
    assert result["_metadata"]["backend"] == "upstream"
    assert result["_metadata"]["response_status"] == "success"


def test_upstream_model_override_and_the_echo_hook(
    upstream: str, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    router_key, client_key = keys
    with DevServer(
        key=router_key, upstream=upstream + "/v1", upstream_model="qwen3:0.6b"
    ) as server:
        assert call(server, client_key, REQUEST)[0] == 200
        status, result = call(
            server, client_key, {**REQUEST, "model": "devserver/echo", "tools": []}
        )
    assert [body["model"] for _, _, body in _Upstream.received] == ["qwen3:0.6b"]
    assert status == 200
    assert result["_metadata"]["backend"] == "echo"


@pytest.mark.parametrize(
    ("mode", "status", "detail"),
    [
        ("429", 429, "slow down"),
        ("text500", 500, "model crashed"),
        ("notjson", 502, "not JSON"),
    ],
)
def test_upstream_failures_are_relayed(
    upstream: str,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    mode: str,
    status: int,
    detail: str,
) -> None:
    _Upstream.mode = mode
    router_key, client_key = keys
    with DevServer(key=router_key, upstream=upstream) as server:
        got_status, got_detail = call(server, client_key, REQUEST)
    assert got_status == status
    assert detail in got_detail


def test_unreachable_and_slow_upstreams(
    upstream: str, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    router_key, client_key = keys
    _Upstream.mode = "slow"
    with DevServer(key=router_key, upstream=upstream, upstream_timeout=0.3) as server:
        status, detail = call(server, client_key, REQUEST)
    assert (status, "timed out" in detail) == (504, True)
    with DevServer(key=router_key, upstream="http://127.0.0.1:9") as server:
        status, detail = call(server, client_key, REQUEST)
    assert (status, "unreachable" in detail) == (502, True)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://localhost:11434", "http://localhost:11434/v1/chat/completions"),
        ("http://localhost:8080/", "http://localhost:8080/v1/chat/completions"),
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
    ],
)
def test_endpoint_of(url: str, endpoint: str) -> None:
    assert endpoint_of(url) == endpoint
