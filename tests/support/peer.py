"""The public ``nomyo==0.2.9`` client, run in its own virtualenv, as an interoperability peer.

Rules of this module:

- The peer runs in a subprocess of ``NOMYO_PEER_PYTHON`` (default: ``.venv-nomyo/bin/python``
  under the repository root); nothing of it is imported here. A missing peer fails the test
  loudly, it never skips: run ``./dev setup`` to build it.
- The peer program below is ours. It drives the public client's documented API and reports
  every outcome, answer or exception, as JSON, so tests compare facts rather than tracebacks.
- The peer gets a pre-generated RSA-4096 identity (``key_dir``, which 0.2.9 accepts), made once
  per test process, so that no test pays a 4096-bit key generation in the peer.

``run_public_client(url, model=..., messages=[...])`` is the one-call form; ``run_peer(ops)``
runs several operations in one interpreter (each start costs about 0.5 s of imports).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "chat_op",
    "peer_key_dir",
    "peer_private_key",
    "peer_python",
    "run_peer",
    "run_public_client",
]

ROOT = Path(__file__).resolve().parents[2]

# Runs inside the peer's virtualenv. Reads {"ops": [...]} on stdin, prints one JSON line of
# results. Each op: {"op": "chat", "url", "client": {...}, "create": {...}}, {"op": "seal",
# "router_pem", "payload"} or {"op": "open", "key_dir", "package", "payload_id"}.
_PROGRAM = r"""
import asyncio, json, os, sys, time
import nomyo
from nomyo.SecureCompletionClient import SecureCompletionClient

def failure(exc):
    return {"error": {
        "type": type(exc).__name__,
        "mro": [c.__name__ for c in type(exc).__mro__],
        "message": str(exc),
        "status_code": getattr(exc, "status_code", None),
        "error_details": getattr(exc, "error_details", None),
    }}

clients = {}

async def chat(op):
    # One client per (url, options), reused as an app would: loading its 4096-bit key costs
    # about 0.25 s, a chat about 30 ms.
    options = dict(op.get("client", {}))
    url = op["url"]
    cache_key = json.dumps([url, options], sort_keys=True)
    client = clients.get(cache_key)
    if client is None:
        client = clients[cache_key] = nomyo.SecureChatCompletion(
            base_url=url, allow_http=url.startswith("http://"), **options)
    started = time.perf_counter()
    try:
        response = await client.create(**op["create"])
    except Exception as exc:
        out = failure(exc)
    else:
        out = {"response": response}
    out["elapsed"] = time.perf_counter() - started
    return out

async def seal(op):
    client = SecureCompletionClient(router_url="https://router.invalid")
    client.generate_keys()
    async def router_key():
        return op["router_pem"]
    client.fetch_server_public_key = router_key
    package = await client.encrypt_payload(op["payload"])
    return {"package": package.decode("utf-8")}

async def open_(op):
    client = SecureCompletionClient(router_url="https://router.invalid")
    client.load_keys(os.path.join(op["key_dir"], "private_key.pem"))
    try:
        response = await client.decrypt_response(op["package"].encode("utf-8"), op["payload_id"])
    except Exception as exc:
        return failure(exc)
    return {"response": response}

async def main():
    ops = json.loads(sys.stdin.read())["ops"]
    handlers = {"chat": chat, "seal": seal, "open": open_}
    results = [await handlers[op["op"]](op) for op in ops]
    sys.stdout.write(json.dumps(results) + "\n")

asyncio.run(main())
"""


def peer_python() -> str:
    """The peer interpreter; fails the test (never skips) when it is not there."""
    path = os.environ.get("NOMYO_PEER_PYTHON") or str(ROOT / ".venv-nomyo" / "bin" / "python")
    if not Path(path).is_file():
        pytest.fail(
            f"the public nomyo client's python is missing at {path}: run `./dev setup`",
            pytrace=False,
        )
    return path


@functools.cache
def peer_key_dir() -> str:
    """A folder with ``private_key.pem``/``public_key.pem`` (RSA-4096), made once per process."""
    folder = tempfile.mkdtemp(prefix="nomyo-peer-keys-")
    atexit.register(shutil.rmtree, folder, True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(os.path.join(folder, "private_key.pem"), os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    Path(folder, "public_key.pem").write_bytes(public)
    return folder


def peer_private_key() -> rsa.RSAPrivateKey:
    """The peer's identity (``peer_key_dir``), for sealing answers to it."""
    with open(f"{peer_key_dir()}/private_key.pem", "rb") as f:
        loaded = serialization.load_pem_private_key(f.read(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


def run_peer(
    ops: list[dict[str, Any]], *, timeout: float = 90, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run the peer program on ``ops``; one result dict per op, in order.

    ``env`` adds variables (e.g. ``SSL_CERT_FILE`` to trust a test certificate)."""
    proc = subprocess.run(
        [peer_python(), "-c", _PROGRAM],
        input=json.dumps({"ops": ops}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"the peer failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    results: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def chat_op(url: str, **chat: Any) -> dict[str, Any]:
    """One ``chat`` op: client options (``api_key``, ``max_retries``, ``key_dir``,
    ``secure_memory``) go to the constructor, everything else to ``create``."""
    client = {"key_dir": peer_key_dir(), "max_retries": 0}
    for name in ("api_key", "max_retries", "key_dir", "secure_memory"):
        if name in chat:
            client[name] = chat.pop(name)
    return {"op": "chat", "url": url, "client": client, "create": chat}


def run_public_client(
    url: str, *, timeout: float = 90, env: dict[str, str] | None = None, **chat: Any
) -> dict[str, Any]:
    """Have the public client complete one chat against ``url``.

    Returns ``{"response": {...}}`` or ``{"error": {"type", "mro", "message", "status_code",
    "error_details"}}``, plus ``"elapsed"`` seconds. ``max_retries`` defaults to 0 here (the
    client's own default is 2, with 1 s and 2 s sleeps); pass it to test retries.
    """
    return run_peer([chat_op(url, **chat)], timeout=timeout, env=env)[0]
