"""In-test stand-ins for the client's unit tests: an agent on a real Unix socket speaking
``nomyo_agent.protocol``, and a router as an ``httpx.MockTransport`` handler.

They "seal" with a transparent envelope (base64 plaintext, a SHA-256 tag, the recipient named in
``encrypted_aes_key``) so that the client's logic can be tested on its own, quickly and without
cryptography; the end-to-end tests use the real agent and devserver. The tests at the bottom
check the stand-ins themselves (``tests/test_client_fakes.py``), so a broken fake cannot make
the client tests pass. Registered in ``tests/conftest.py``: the ``fake_agent`` fixture is there
for every test module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nomyo_agent import errors as ae
from nomyo_agent import protocol as p
from nomyo_agent.package import ALGORITHM, VERSION

OUR_PEM = "-----BEGIN PUBLIC KEY-----\nOURKEY/fake+agent==\n-----END PUBLIC KEY-----\n"
ROUTER_PEM = "-----BEGIN PUBLIC KEY-----\nROUTERKEY/one==\n-----END PUBLIC KEY-----\n"
ROUTER_PEM_2 = "-----BEGIN PUBLIC KEY-----\nROUTERKEY/two==\n-----END PUBLIC KEY-----\n"


def fake_seal(plaintext: bytes, recipient: str, **overrides: Any) -> bytes:
    package: dict[str, Any] = {
        "version": "1.0",
        "algorithm": "hybrid-aes256-rsa4096",
        "encrypted_payload": {
            "ciphertext": base64.b64encode(plaintext).decode(),
            "nonce": base64.b64encode(bytes(12)).decode(),
            "tag": base64.b64encode(hashlib.sha256(plaintext).digest()[:16]).decode(),
        },
        "encrypted_aes_key": base64.b64encode(recipient.encode()).decode(),
        "key_algorithm": "RSA-OAEP-SHA256",
        "payload_algorithm": "AES-256-GCM",
    }
    package.update(overrides)
    return json.dumps(package).encode()


def fake_open(package: bytes, recipient: str) -> bytes:
    """The plaintext, or ValueError for anything a real open would refuse."""
    data = json.loads(package)
    if (data["version"], data["algorithm"]) != (VERSION, ALGORITHM):
        raise ValueError("downgrade")
    if base64.b64decode(data["encrypted_aes_key"]).decode() != recipient:
        raise ValueError("other recipient")
    plaintext = base64.b64decode(data["encrypted_payload"]["ciphertext"])
    if (
        base64.b64decode(data["encrypted_payload"]["tag"])
        != hashlib.sha256(plaintext).digest()[:16]
    ):
        raise ValueError("bad tag")
    return plaintext


# --- the agent ---------------------------------------------------------------------------------


@dataclass
class FakeAgent:
    """A protocol-speaking agent on a Unix socket, run on its own thread and event loop."""

    path: str
    protocol: int = p.PROTOCOL_VERSION
    autostarted: bool = False
    pin_policy: str = "tofu"  # or "off": accept any router key
    identity: bool = True
    fail_next: list[ae.AgentError] = field(default_factory=list)  # raised for the next requests
    drop_next: int = 0  # close the connection instead of answering this many requests
    requests: list[p.Request] = field(default_factory=list)
    connections: int = 0
    pins: dict[str, str] = field(default_factory=dict)
    imported: list[bytes] = field(default_factory=list)
    on_stop: Callable[[], None] | None = None  # called after answering Stop

    def handle(self, req: p.Request) -> p.Response:
        self.requests.append(req)
        if isinstance(req, p.Hello):
            return p.HelloReply(
                protocol=self.protocol, agent_version="fake", capabilities=[], pid=1,
                autostarted=self.autostarted,
            )  # fmt: skip
        if self.fail_next:
            return self.fail_next.pop(0).to_reply()
        if isinstance(req, p.Seal):
            if not self.identity:
                return ae.NoIdentityError("no identity").to_reply()
            pinned = self.pins.setdefault(req.origin, req.router_key_pem)
            if pinned != req.router_key_pem and self.pin_policy != "off":
                return ae.PinMismatchError(
                    f"the router key of {req.origin} changed", origin=req.origin,
                    fingerprint="ab" * 32,
                ).to_reply()  # fmt: skip
            return p.SealReply(
                package=fake_seal(req.plaintext, req.router_key_pem),
                public_key_pem=OUR_PEM, fingerprint="cd" * 32, pinned="known",
            )  # fmt: skip
        if isinstance(req, p.Open):
            try:
                return p.OpenReply(
                    plaintext=fake_open(req.package, OUR_PEM),
                    processed_at=json.loads(req.package).get("processed_at"),
                )
            except (ValueError, KeyError):
                return ae.DecryptFailedError("decryption failed").to_reply()
        if isinstance(req, p.Import):
            self.imported.append(req.pem)
            self.identity = True
            return p.IdentityReply(
                public_key_pem=OUR_PEM, fingerprint="cd" * 32, bits=4096,
                passphrase_protected=False,
            )  # fmt: skip
        if isinstance(req, (p.PublicKey, p.Generate)):
            if isinstance(req, p.PublicKey) and not self.identity:
                return ae.NoIdentityError("no identity").to_reply()
            self.identity = True
            return p.IdentityReply(
                public_key_pem=OUR_PEM, fingerprint="cd" * 32, bits=req.bits
                if isinstance(req, p.Generate) else 4096, passphrase_protected=False,
            )  # fmt: skip
        if isinstance(req, p.Stop):
            return p.Ok()
        return ae.BadRequestError("not faked").to_reply()

    def ops(self) -> list[str]:
        return [type(r).__name__ for r in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        frames = p.FrameReader()
        try:
            while data := await reader.read(65536):
                for body in frames.feed(data):
                    if self.drop_next:
                        self.drop_next -= 1
                        writer.close()
                        return
                    request = p.decode_request(body)
                    writer.write(p.encode_frame(self.handle(request)))
                    await writer.drain()
                    if isinstance(request, p.Stop) and self.on_stop is not None:
                        self.on_stop()
                        return
        except (ConnectionError, p.FrameError):
            pass
        finally:
            writer.close()


@pytest.fixture(name="fake_agent")
def fake_agent_fixture(tmp_path: Path) -> Iterator[FakeAgent]:
    agent = FakeAgent(path=str(tmp_path / "agent.sock"))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server: list[asyncio.AbstractServer] = []

    async def start() -> None:
        server.append(await asyncio.start_unix_server(agent._serve, agent.path))
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)

    def stop_listening() -> None:  # as a real agent does on Stop: the socket goes away
        server[0].close()
        Path(agent.path).unlink(missing_ok=True)

    agent.on_stop = stop_listening
    yield agent

    async def stop() -> None:
        server[0].close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


# --- the router --------------------------------------------------------------------------------


@dataclass
class FakeRouter:
    """A router as an httpx.MockTransport handler. ``script`` answers POSTs first, in order."""

    key: str = ROUTER_PEM
    script: list[Callable[[httpx.Request], httpx.Response] | int] = field(default_factory=list)
    posts: list[httpx.Request] = field(default_factory=list)
    gets: int = 0
    plaintexts: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/pki/public_key"):
            self.gets += 1
            return httpx.Response(200, text=self.key)
        assert request.url.path.endswith("/v1/chat/secure_completion")
        self.posts.append(request)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, int):
                return httpx.Response(step, json={"detail": f"scripted {step}"})
            return step(request)
        return self.answer(request)

    def answer(self, request: httpx.Request) -> httpx.Response:
        try:
            plaintext = fake_open(request.content, self.key)
        except ValueError:
            return httpx.Response(400, json={"detail": "decryption failed"})
        payload = json.loads(plaintext)
        self.plaintexts.append(payload)
        completion = {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
            "model": payload["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": payload["messages"][-1]["content"]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            "_metadata": {"response_status": "success", "security_tier":
                          request.headers.get("x-security-tier", "standard")},
        }  # fmt: skip
        recipient = urllib.parse.unquote(request.headers["x-public-key"])
        body = fake_seal(json.dumps(completion).encode(), recipient, processed_at=1700000001)
        return httpx.Response(200, content=body)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))
