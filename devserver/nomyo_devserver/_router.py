"""The router's logic, free of sockets: headers and body in, a ``Reply`` out.

Rules of this module:

- Checks run in this order, each with PROTOCOL.md's status and a ``{"detail": ...}`` body:
  API key (401), ``Content-Type``, ``X-Payload-ID``, ``X-Security-Tier``, ``X-Public-Key``
  (RSA of 2048 bits or more), the package, the decrypted request (a JSON object with ``model``
  and ``messages``, no ``stream: true``), all 400. Authentication comes first so that an
  unauthenticated caller learns nothing else.
- A package that does not open gets a 400 whose detail names a structural defect
  (``_envelope.diagnose``) or, for a well-formed one, the fixed ``UNDECRYPTABLE`` text: it
  tells a client that the router key probably changed, never which cryptographic step failed.
- The answer is sealed to the key in ``X-Public-Key`` with ``processed_at`` from the injected
  clock, and carries a ``_metadata`` object (``response_status``, ``security_tier``, ...).
"""

from __future__ import annotations

import functools
import hmac
import sys
import threading
import time
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent._envelope import diagnose, open_package, seal
from nomyo_agent._keys import MIN_BITS
from nomyo_agent.errors import DecryptFailedError
from nomyo_agent.package import TIERS
from nomyo_devserver import _echo, _hooks
from nomyo_devserver._keystore import RouterKeys
from nomyo_devserver._upstream import Upstream, UpstreamError

__all__ = ["TIERS", "UNDECRYPTABLE", "Reply", "Router"]

UNDECRYPTABLE = (
    "the package could not be decrypted with this router's key (sealed to another key, or altered)"
)
_HTML_500 = (
    b"<html><head><title>500 Internal Server Error</title></head><body>"
    b"<h1>Internal Server Error</h1><p>nomyo-devserver test hook</p></body></html>\n"
)
_PAYLOAD_IDS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send: ``drop`` closes without answering, ``close`` answers then closes."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    drop: bool = False


def error(
    status: int, detail: str, *, headers: tuple[tuple[str, str], ...] = (), close: bool = False
) -> Reply:
    return Reply(status, msgspec.json.encode({"detail": detail}), headers=headers, close=close)


class _Refused(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


@functools.lru_cache(maxsize=64)
def _client_key(quoted: str) -> rsa.RSAPublicKey:
    """The client's key from ``X-Public-Key``; parsed once per distinct key."""
    try:
        key = serialization.load_pem_public_key(urllib.parse.unquote(quoted).encode("utf-8"))
    except (ValueError, TypeError, UnicodeError) as exc:
        raise _Refused(error(400, "X-Public-Key is not a percent-encoded PEM public key")) from exc
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_BITS:
        raise _Refused(error(400, f"X-Public-Key must be an RSA key of at least {MIN_BITS} bits"))
    return key


class Router:
    """The secure-completion endpoint and the key endpoint; thread-safe."""

    def __init__(
        self,
        keys: RouterKeys,
        *,
        api_key: str | None = None,
        upstream: Upstream | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.keys = keys
        self._api_key = api_key
        self._upstream = upstream
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._attempts: OrderedDict[str, int] = OrderedDict()

    def count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def stats(self) -> dict[str, int]:
        """Counters: ``connections``, ``key_fetches``, ``completions`` (200s), ``dropped``,
        and ``status_NNN`` for each error status answered to a secure completion."""
        with self._lock:
            return dict(self._counts)

    def public_key(self) -> Reply:
        self.count("key_fetches")
        return Reply(200, self.keys.current.pem.encode("ascii"), "text/plain; charset=utf-8")

    def secure_completion(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one ``POST /v1/chat/secure_completion``; ``headers`` has lower-case names."""
        try:
            reply = self._complete(headers, body)
        except _Refused as refused:
            reply = refused.reply
        outcome = "dropped" if reply.drop else f"status_{reply.status}"
        self.count("completions" if reply.status == 200 else outcome)
        return reply

    def _complete(self, headers: Mapping[str, str], body: bytes) -> Reply:
        if self._api_key is not None:
            given = headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {self._api_key}".encode()):
                return error(401, "invalid or missing API key")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/octet-stream":
            return error(400, "Content-Type must be application/octet-stream")
        payload_id = headers.get("x-payload-id", "")
        if not payload_id or len(payload_id) > 200:
            return error(400, "X-Payload-ID is required (a unique id per request)")
        tier = headers.get("x-security-tier")
        if tier is not None and tier not in TIERS:
            return error(400, f"X-Security-Tier must be one of {', '.join(TIERS)}")
        if "x-public-key" not in headers:
            return error(
                400, "X-Public-Key is required (the client's public key PEM, percent-encoded)"
            )
        client_key = _client_key(headers["x-public-key"])
        router_key = self.keys.current
        try:
            plaintext = open_package(router_key.private, body).plaintext
        except DecryptFailedError:
            reason = diagnose(body)
            return error(400, f"invalid encrypted package: {reason}" if reason else UNDECRYPTABLE)
        try:
            request = msgspec.json.decode(plaintext)
        except msgspec.DecodeError:
            request = None
        if not isinstance(request, dict):
            return error(400, "the decrypted payload is not a JSON object")
        if not isinstance(request.get("model"), str) or not request["model"]:
            return error(400, "the request needs a model name")
        if not isinstance(request.get("messages"), list):
            return error(400, "the request needs a list of messages")
        if request.get("stream"):
            return error(
                400, "streaming is not supported for secure completions; send stream=false"
            )
        try:
            hook = _hooks.parse_hook(request["model"])
        except ValueError as exc:
            return error(400, str(exc))
        return self._answer(request, hook, client_key, tier or "standard", payload_id)

    def _answer(
        self,
        request: dict[str, Any],
        hook: _hooks.Hook | None,
        client_key: rsa.RSAPublicKey,
        tier: str,
        payload_id: str,
    ) -> Reply:
        kind = hook.kind if hook else ""
        if hook and kind == "status":
            after = () if hook.retry_after is None else (("Retry-After", str(hook.retry_after)),)
            return error(hook.status, f"test hook: status {hook.status}", headers=after)
        if hook and kind == "flaky" and self._attempt(payload_id) <= hook.times:
            return error(hook.status, f"test hook: status {hook.status} before a success")
        if kind == "html-500":
            return Reply(500, _HTML_500, "text/html; charset=utf-8")
        if kind == "garbage":
            return Reply(200, b"this is not an encrypted package\n", "application/octet-stream")
        if kind == "drop":
            return Reply(0, drop=True)
        if hook and kind == "slow":
            self._sleep(hook.delay)
        if self._upstream is not None and hook is None:
            try:
                answer = self._upstream.complete(request)
            except UpstreamError as exc:
                return error(exc.status, exc.detail)
            backend = "upstream"
        else:
            answer = _echo.completion(request)
            backend = "echo"
        upstream_meta = answer.get("_metadata")
        answer["_metadata"] = {
            **(upstream_meta if isinstance(upstream_meta, dict) else {}),
            "response_status": "success",
            "security_tier": tier,
            "router": "nomyo-devserver",
            "backend": backend,
            "memory_protection": {
                "platform": sys.platform,
                "memory_locking": False,
                "secure_zeroing": False,
                "core_dump_prevention": False,
            },
        }
        recipient = (
            self.keys.current.private.public_key() if kind == "other-recipient" else client_key
        )
        package = bytes(seal(recipient, msgspec.json.encode(answer), processed_at=self._clock()))
        return Reply(200, _spoil(package, kind), "application/octet-stream")

    def _attempt(self, payload_id: str) -> int:
        """How many times this payload id was seen, this time included (bounded memory)."""
        with self._lock:
            seen = self._attempts.pop(payload_id, 0) + 1
            self._attempts[payload_id] = seen
            while len(self._attempts) > _PAYLOAD_IDS_KEPT:
                self._attempts.popitem(last=False)
            return seen


def _spoil(package: bytes, kind: str) -> bytes:
    """Damage a good package the way the hook ``kind`` asks (unchanged for other kinds)."""
    if kind == "truncated":
        return package[: len(package) // 2]
    if kind not in ("bad-tag", "bad-version", "bad-algorithm"):
        return package
    doc = msgspec.json.decode(package)
    if kind == "bad-tag":
        tag = doc["encrypted_payload"]["tag"]
        # Flip the lowest bit of the first base64 digit's value: still valid base64.
        first = "B" if tag[0] == "A" else "A"
        doc["encrypted_payload"]["tag"] = first + tag[1:]
    elif kind == "bad-version":
        doc["version"] = "0.9"
    else:
        doc["algorithm"] = "hybrid-aes128-rsa2048"
    encoded: bytes = msgspec.json.encode(doc)
    return encoded
