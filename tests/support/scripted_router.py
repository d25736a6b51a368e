"""The router the client's unit tests talk to: an ``httpx.MockTransport`` handler that opens what
it is sent and seals its answer with the package code the devserver uses (real RSA-OAEP and
AES-GCM), so that only a request really sealed to its key gets an answer. ``script`` answers
POSTs first, in order (a status, or a handler of its own); ``posts``, ``gets`` and
``plaintexts`` say what it was sent. Its keys are 2048-bit ones from ``support.keys``.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from nomyo_agent import _envelope, _keys
from nomyo_agent.errors import DecryptFailedError
from support.keys import rsa_key

__all__ = ["ROUTER_PEM", "ROUTER_PEM_2", "ScriptedRouter"]

ROUTER_KEY, ROUTER_KEY_2 = rsa_key(2048, 1), rsa_key(2048, 2)
ROUTER_PEM = _keys.public_pem(ROUTER_KEY.public_key())
ROUTER_PEM_2 = _keys.public_pem(ROUTER_KEY_2.public_key())
_ROUTER_KEYS = {ROUTER_PEM: ROUTER_KEY, ROUTER_PEM_2: ROUTER_KEY_2}


@dataclass
class ScriptedRouter:
    """A router as an httpx.MockTransport handler; see the module docstring."""

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
        private = _ROUTER_KEYS[self.key]  # a router serving another key answers by script only
        try:
            plaintext = _envelope.open_package(private, request.content).plaintext
        except DecryptFailedError:
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
        recipient = _keys.load_router_key(urllib.parse.unquote(request.headers["x-public-key"]))
        body = _envelope.seal(recipient, json.dumps(completion).encode(), processed_at=1700000001)
        return httpx.Response(200, content=body)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))
