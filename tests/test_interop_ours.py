"""Our client against the public ``nomyo==0.2.9`` client (a peer nobody here wrote), on the same
devserver: the same chats give the same answers and the same errors; and what our client puts on
the wire follows PROTOCOL.md to the byte-level details it names."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import nomyo_client as nc
from nomyo_agent import _envelope
from nomyo_agent import protocol as p
from nomyo_client import Answer
from nomyo_client._h11pool import H11Pool
from nomyo_devserver import DevServer
from support.agent import RunningAgent
from support.peer import chat_op, run_peer

API_KEY = "sk-interop"
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]  # fmt: skip
HELLO = [{"role": "user", "content": "What is the capital of France?"}]

CHATS: dict[str, dict[str, Any]] = {
    "plain": {"model": "devserver/echo", "messages": HELLO},
    "params": {"model": "devserver/echo", "messages": HELLO, "temperature": 0.3,
               "max_tokens": 3, "top_p": 0.9, "stop": ["France"], "n": 2, "user": "u-1"},
    "system": {"model": "devserver/echo", "messages": [
        {"role": "system", "content": "be brief"}, *HELLO]},
    "tools": {"model": "devserver/echo", "messages": HELLO, "tools": TOOLS,
              "tool_choice": "auto"},
    "tier": {"model": "devserver/echo", "messages": HELLO, "security_tier": "maximum"},
    "unicode": {"model": "devserver/echo", "messages": [
        {"role": "user", "content": "grüße, 你好, \u2603 \"quoted\" \\ back"}]},
}  # fmt: skip
STATUSES = [400, 401, 403, 404, 429, 500, 502, 503, 504]


class Recorder(H11Pool):
    """Our own HTTP client, recording each request as sent."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Sent] = []

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        limit: int | None = None,
    ) -> Answer:
        lower = {k.lower(): v for k, v in headers.items()}
        self.requests.append(Sent(method, urllib.parse.urlsplit(url).path, lower, body or b""))
        return await super().request(method, url, body, headers, limit=limit)


@dataclass
class Sent:
    method: str
    path: str
    headers: dict[str, str]
    content: bytes


@pytest.fixture(scope="module")
def router() -> Iterator[DevServer]:
    with DevServer(key_bits=4096, api_key=None) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_router() -> Iterator[DevServer]:
    with DevServer(key_bits=2048, api_key=API_KEY) as server:
        yield server


@pytest.fixture
def ours(agent: RunningAgent) -> RunningAgent:
    agent.keygen(bits=2048)
    return agent


def run_ours(
    agent: RunningAgent, url: str, chats: list[dict[str, Any]], recorder: Recorder | None = None,
    **client: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """Our client on each chat; results shaped like the peer's (response or error)."""

    async def go() -> list[dict[str, Any]]:
        http = recorder or Recorder()
        results: list[dict[str, Any]] = []
        async with nc.SecureChatCompletion(
            url, allow_http=True, agent_socket=agent.path, autostart=False,
            http_client=http,  # type: ignore[arg-type]
            max_retries=0, **client,
        ) as c:  # fmt: skip
            for chat in chats:
                try:
                    results.append({"response": await c.create(**chat)})
                except nc.APIError as exc:
                    results.append({"error": {"type": type(exc).__name__,
                                              "status_code": exc.status_code,
                                              "error_details": exc.error_details}})  # fmt: skip
        await http.aclose()
        return results

    return asyncio.run(go())


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """What must match: all but the per-request id and the router's processing time."""
    result = json.loads(json.dumps(result))
    result.pop("elapsed", None)
    if "response" in result:
        meta = result["response"]["_metadata"]
        assert meta.pop("payload_id")
        assert meta.pop("processed_at")
    else:
        result["error"] = {k: result["error"][k] for k in ("type", "status_code", "error_details")}
    return result


def test_same_chats_same_answers(ours: RunningAgent, router: DevServer) -> None:
    names = sorted(CHATS)
    theirs = run_peer([chat_op(router.url, **CHATS[n]) for n in names])
    mine = run_ours(ours, router.url, [CHATS[n] for n in names])
    for name, a, b in zip(names, theirs, mine, strict=True):
        assert "response" in a, (name, a)
        assert comparable(a) == comparable(b), name
    tools = mine[names.index("tools")]["response"]["choices"][0]["message"]
    assert tools["tool_calls"][0]["function"]["name"] == "get_weather"
    assert mine[names.index("tier")]["response"]["_metadata"]["security_tier"] == "maximum"


def test_same_error_statuses(ours: RunningAgent, router: DevServer) -> None:
    chats = [{"model": f"devserver/status-{s}", "messages": HELLO} for s in STATUSES]
    theirs = run_peer([chat_op(router.url, **chat) for chat in chats])
    mine = run_ours(ours, router.url, chats)
    for status, a, b in zip(STATUSES, theirs, mine, strict=True):
        assert comparable(a) == comparable(b), status
        assert b["error"]["status_code"] == status


def test_api_key(ours: RunningAgent, keyed_router: DevServer) -> None:
    chat = CHATS["plain"]
    theirs = run_peer([chat_op(keyed_router.url, **chat, api_key=API_KEY),
                       chat_op(keyed_router.url, **chat)])  # fmt: skip
    mine = run_ours(ours, keyed_router.url, [chat, {**chat, "api_key": None}], api_key=API_KEY)
    mine += run_ours(ours, keyed_router.url, [chat])
    assert comparable(theirs[0]) == comparable(mine[0])
    assert comparable(theirs[1]) == comparable(mine[2])
    assert mine[2]["error"]["type"] == "AuthenticationError"


def test_our_requests_follow_the_protocol_bytes(ours: RunningAgent, router: DevServer) -> None:
    recorder = Recorder()
    chat = {**CHATS["tools"], "security_tier": "high", "api_key": "sk-x", "base_url": router.url}
    run_ours(ours, router.url, [chat, CHATS["plain"]], recorder=recorder)
    gets = [r for r in recorder.requests if r.method == "GET"]
    posts = [r for r in recorder.requests if r.method == "POST"]
    assert [r.path for r in gets] == ["/pki/public_key"]  # fetched once, reused
    assert len(posts) == 2
    with ours.connect() as conn:
        our_pem = conn.call(p.PublicKey(), p.IdentityReply).public_key_pem
    ids = []
    for request in posts:
        headers = request.headers
        assert request.path == "/v1/chat/secure_completion"
        assert headers["content-type"] == "application/octet-stream"
        assert headers["x-public-key"] == urllib.parse.quote(our_pem)
        payload_id = headers["x-payload-id"]
        assert str(uuid.UUID(payload_id)) == payload_id
        assert uuid.UUID(payload_id).version == 4
        ids.append(payload_id)
        package = json.loads(request.content)
        assert set(package) == {"version", "algorithm", "encrypted_payload", "encrypted_aes_key",
                                "key_algorithm", "payload_algorithm"}  # fmt: skip
        assert package["version"] == "1.0"
        assert package["algorithm"] == "hybrid-aes256-rsa4096"
        assert package["key_algorithm"] == "RSA-OAEP-SHA256"
        assert package["payload_algorithm"] == "AES-256-GCM"
        sealed = package["encrypted_payload"]
        assert set(sealed) == {"ciphertext", "nonce", "tag"}
        for field, size in (("nonce", 12), ("tag", 16)):
            raw = base64.b64decode(sealed[field], validate=True)
            assert len(raw) == size
            assert base64.b64encode(raw).decode() == sealed[field]  # standard, padded
        wrapped = base64.b64decode(package["encrypted_aes_key"], validate=True)
        assert len(wrapped) == 512  # RSA-OAEP under the router's 4096-bit key
        plaintext = _envelope.open_package(router.keys.current.private, request.content).plaintext
        assert len(base64.b64decode(sealed["ciphertext"])) == len(plaintext)  # tag kept apart
        sent = json.loads(plaintext)
        assert not {"security_tier", "api_key", "base_url"} & set(sent)
        assert sent["model"] == "devserver/echo"
    assert len(set(ids)) == 2
    first, second = posts
    assert first.headers["authorization"] == "Bearer sk-x"
    assert first.headers["x-security-tier"] == "high"
    assert "authorization" not in second.headers
    assert "x-security-tier" not in second.headers
    assert json.loads(_envelope.open_package(
        router.keys.current.private, first.content).plaintext)["tools"] == TOOLS  # fmt: skip
