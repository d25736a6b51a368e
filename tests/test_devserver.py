"""nomyo-devserver in-process (``DevServer``): the protocol's statuses, test hooks, keep-alive,
concurrency, key handling and TLS, spoken to over real sockets with httpx and our envelope."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nomyo_agent._envelope import diagnose, open_package, seal
from nomyo_agent._keys import load_router_key, public_pem
from nomyo_agent.errors import DecryptFailedError
from nomyo_devserver import UNDECRYPTABLE, DevServer, KeyFileError, _keystore
from support.devserver import TLSFiles
from support.keys import rsa_key


@pytest.fixture(scope="module")
def router_key() -> rsa.RSAPrivateKey:
    return rsa_key(2048, 0)


@pytest.fixture(scope="module")
def client_key() -> rsa.RSAPrivateKey:
    return rsa_key(2048, 1)


@pytest.fixture
def server(router_key: rsa.RSAPrivateKey) -> Iterator[DevServer]:
    with DevServer(key=router_key) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20, trust_env=False) as client:
        yield client


def chat(model: str = "m", text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def headers_for(client_key: rsa.RSAPrivateKey, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "X-Payload-ID": str(uuid.uuid4()),
        "X-Public-Key": urllib.parse.quote(public_pem(client_key.public_key())),
        **extra,
    }


def post(
    http: httpx.Client,
    server: DevServer,
    client_key: rsa.RSAPrivateKey,
    request: dict[str, Any] | bytes,
    **headers: str,
) -> httpx.Response:
    router = load_router_key(http.get(f"{server.url}/pki/public_key").text)
    body = request if isinstance(request, bytes) else seal(router, json.dumps(request).encode())
    return http.post(
        f"{server.url}/v1/chat/secure_completion",
        content=body,
        headers=headers_for(client_key, **{k.replace("_", "-"): v for k, v in headers.items()}),
    )


def answer(response: httpx.Response, client_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    opened = open_package(client_key, response.content)
    result: dict[str, Any] = json.loads(opened.plaintext)
    result["_processed_at"] = opened.processed_at
    return result


def detail(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    text: str = response.json()["detail"]
    return text


# --- the protocol -----------------------------------------------------------------------------


def test_public_key_is_served_as_pem(server: DevServer, http: httpx.Client) -> None:
    response = http.get(f"{server.url}/pki/public_key")
    assert response.status_code == 200
    assert response.text == server.public_key_pem
    assert response.text.startswith("-----BEGIN PUBLIC KEY-----")
    assert load_router_key(response.text).key_size == 2048


def test_a_chat_is_answered_sealed_to_the_client(
    server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    before = time.time()
    result = answer(post(http, server, client_key, chat()), client_key)
    assert result["object"] == "chat.completion"
    assert result["model"] == "m"
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    meta = result["_metadata"]
    assert meta["response_status"] == "success"
    assert meta["security_tier"] == "standard"
    assert meta["backend"] == "echo"
    assert before <= result["_processed_at"] <= time.time()


@pytest.mark.parametrize("tier", ["standard", "high", "maximum"])
def test_security_tiers_are_reported(
    server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey, tier: str
) -> None:
    response = post(http, server, client_key, chat(), X_Security_Tier=tier)
    assert answer(response, client_key)["_metadata"]["security_tier"] == tier


def test_answers_are_deterministic(
    server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    first = answer(post(http, server, client_key, chat(temperature=0.5)), client_key)
    second = answer(post(http, server, client_key, chat(temperature=0.5)), client_key)
    other = answer(post(http, server, client_key, chat(temperature=0.6)), client_key)
    for key in ("id", "created", "choices", "usage"):
        assert first[key] == second[key]
    assert first["id"] != other["id"]


def test_api_key_is_required_when_set(
    router_key: rsa.RSAPrivateKey, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    with DevServer(key=router_key, api_key="s3cret") as server:
        missing = post(http, server, client_key, chat())
        wrong = post(http, server, client_key, chat(), Authorization="Bearer nope")
        right = post(http, server, client_key, chat(), Authorization="Bearer s3cret")
    assert missing.status_code == wrong.status_code == 401
    assert "api key" in detail(missing).lower()
    assert answer(right, client_key)["choices"][0]["message"]["content"] == "echo: hello there"


def _small_key_pem() -> str:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    return urllib.parse.quote(public_pem(small.public_key()))


def _ec_key_pem() -> str:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return urllib.parse.quote(pem.decode())


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Content-Type": "application/json"}, "Content-Type"),
        ({"X-Payload-ID": ""}, "X-Payload-ID"),
        ({"X-Security-Tier": "ultra"}, "X-Security-Tier"),
        ({"X-Public-Key": "not a key"}, "X-Public-Key"),
        ({"X-Public-Key": "SMALL"}, "at least 2048"),
        ({"X-Public-Key": "EC"}, "RSA key"),
    ],
)
def test_bad_headers_are_400(
    server: DevServer,
    http: httpx.Client,
    client_key: rsa.RSAPrivateKey,
    headers: dict[str, str],
    expected: str,
) -> None:
    router = load_router_key(server.public_key_pem)
    sent = headers_for(client_key)
    for name, value in headers.items():
        sent[name] = {"SMALL": _small_key_pem, "EC": _ec_key_pem}.get(value, lambda v=value: v)()
    response = http.post(
        f"{server.url}/v1/chat/secure_completion",
        content=seal(router, json.dumps(chat()).encode()),
        headers=sent,
    )
    assert response.status_code == 400
    assert expected in detail(response)


def test_missing_public_key_header_is_400(
    server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    sent = headers_for(client_key)
    del sent["X-Public-Key"]
    response = http.post(f"{server.url}/v1/chat/secure_completion", content=b"{}", headers=sent)
    assert response.status_code == 400
    assert "X-Public-Key is required" in detail(response)


def test_bad_packages_are_400_with_a_reason(
    server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    garbage = post(http, server, client_key, b"not a package")
    assert garbage.status_code == 400
    assert detail(garbage).startswith("invalid encrypted package: not a package")
    downgraded = json.loads(seal(load_router_key(server.public_key_pem), b"{}"))
    downgraded["version"] = "0.9"
    response = post(http, server, client_key, json.dumps(downgraded).encode())
    assert response.status_code == 400
    assert "unsupported version '0.9'" in detail(response)
    # Sealed to another key (e.g. the client holds a stale router key): the fixed detail.
    stale = seal(client_key.public_key(), json.dumps(chat()).encode())
    response = post(http, server, client_key, stale)
    assert response.status_code == 400
    assert detail(response) == UNDECRYPTABLE


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b"not json", "not a JSON object"),
        (b'{"messages": []}', "model"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": "m", "messages": [], "stream": true}', "streaming is not supported"),
        (b'{"model": "devserver/nope", "messages": []}', "unknown test hook"),
    ],
)
def test_bad_requests_inside_the_package_are_400(
    server: DevServer,
    http: httpx.Client,
    client_key: rsa.RSAPrivateKey,
    request_: bytes,
    expected: str,
) -> None:
    body = seal(load_router_key(server.public_key_pem), request_)
    response = post(http, server, client_key, body)
    assert response.status_code == 400
    assert expected in detail(response)


def test_unknown_paths_and_methods(server: DevServer, http: httpx.Client) -> None:
    assert http.get(f"{server.url}/nope").status_code == 404
    assert http.post(f"{server.url}/v1/chat/completions", content=b"{}").status_code == 404
    assert http.get(f"{server.url}/v1/chat/secure_completion").status_code == 405
    assert http.get(f"{server.url}/").json()["name"] == "nomyo-devserver"


# --- body size -------------------------------------------------------------------------------


def test_bodies_over_the_cap_get_413_and_the_connection_closes(
    router_key: rsa.RSAPrivateKey, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    with DevServer(key=router_key, max_body=4096) as server:
        big = post(http, server, client_key, chat(text="x" * 5000))
        assert big.status_code == 413
        assert "over this router's 4096" in detail(big)
        assert big.headers["connection"] == "close"
        assert server.stats()["status_413"] == 1
        assert post(http, server, client_key, chat()).status_code == 200  # a new connection


def test_a_body_without_content_length_gets_411(server: DevServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/secure_completion HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 411 ")
    assert "Connection: close" in reply


# --- test hooks --------------------------------------------------------------------------------


def test_status_hooks(server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey) -> None:
    limited = post(http, server, client_key, chat("devserver/status-429-after-3"))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert detail(limited) == "test hook: status 429"
    assert post(http, server, client_key, chat("devserver/status-403")).status_code == 403
    html = post(http, server, client_key, chat("devserver/html-500"))
    assert html.status_code == 500
    assert html.headers["content-type"].startswith("text/html")


def test_flaky_hook_fails_the_first_attempts_of_each_payload_id(
    server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    body = seal(
        load_router_key(server.public_key_pem), json.dumps(chat("devserver/flaky-503-2")).encode()
    )
    sent = headers_for(client_key)
    url = f"{server.url}/v1/chat/secure_completion"
    statuses = [http.post(url, content=body, headers=sent).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    sent["X-Payload-ID"] = "another"
    assert http.post(url, content=body, headers=sent).status_code == 503


def test_broken_package_hooks(
    server: DevServer,
    http: httpx.Client,
    client_key: rsa.RSAPrivateKey,
    router_key: rsa.RSAPrivateKey,
) -> None:
    def body(model: str) -> bytes:
        response = post(http, server, client_key, chat(model))
        assert response.status_code == 200
        return response.content

    assert body("devserver/garbage") == b"this is not an encrypted package\n"
    for model in (
        "garbage",
        "truncated",
        "bad-tag",
        "other-recipient",
        "bad-version",
        "bad-algorithm",
    ):
        with pytest.raises(DecryptFailedError):
            open_package(client_key, body(f"devserver/{model}"))
    assert diagnose(body("devserver/truncated")) is not None
    assert diagnose(body("devserver/bad-tag")) is None  # well-formed, only the tag is wrong
    assert "version" in (diagnose(body("devserver/bad-version")) or "")
    assert "algorithm" in (diagnose(body("devserver/bad-algorithm")) or "")
    # "Another recipient" is the router itself: its key opens it, the client's does not.
    opened = open_package(router_key, body("devserver/other-recipient"))
    assert json.loads(opened.plaintext)["choices"][0]["message"]["content"] == "echo: hello there"


def test_drop_hook_closes_without_an_answer(
    server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        post(http, server, client_key, chat("devserver/drop"))
    assert server.stats()["dropped"] == 1


def test_slow_hook_does_not_hold_up_other_requests(
    server: DevServer, client_key: rsa.RSAPrivateKey
) -> None:
    results: dict[str, float] = {}

    def timed(name: str, model: str) -> None:
        with httpx.Client(timeout=20, trust_env=False) as own:
            started = time.monotonic()
            assert post(own, server, client_key, chat(model)).status_code == 200
            results[name] = time.monotonic() - started

    slow = threading.Thread(target=timed, args=("slow", "devserver/slow-800"))
    slow.start()
    time.sleep(0.1)
    timed("fast", "m")
    slow.join(20)
    assert results["slow"] >= 0.8
    assert results["fast"] < 0.6


# --- connections -----------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection_without_nagle(
    server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey
) -> None:
    for _ in range(10):
        assert post(http, server, client_key, chat()).status_code == 200
    stats = server.stats()
    assert stats["connections"] == 1
    assert stats["key_fetches"] == 10
    assert stats["completions"] == 10
    live = list(server._http._live)  # type: ignore[union-attr]
    assert len(live) == 1
    assert live[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_concurrent_requests(server: DevServer, client_key: rsa.RSAPrivateKey) -> None:
    failures: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(timeout=30, trust_env=False) as own:
            for i in range(4):
                text = f"worker {n} request {i}"
                result = answer(post(own, server, client_key, chat(text=text)), client_key)
                if result["choices"][0]["message"]["content"] != f"echo: {text}":
                    failures.append(text)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert server.stats()["completions"] == 64


def test_stop_closes_idle_kept_alive_connections(router_key: rsa.RSAPrivateKey) -> None:
    server = DevServer(key=router_key).start()
    with httpx.Client(timeout=5, trust_env=False) as client:
        assert client.get(f"{server.url}/pki/public_key").status_code == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
        with pytest.raises(httpx.TransportError):
            client.get(f"{server.url}/pki/public_key")
    server.stop()  # idempotent


# --- keys --------------------------------------------------------------------------------------


def test_rotate_key(server: DevServer, http: httpx.Client, client_key: rsa.RSAPrivateKey) -> None:
    old = server.public_key_pem
    stale = seal(load_router_key(old), json.dumps(chat()).encode())
    new_key = rsa_key(2048, 2)
    assert server.rotate_key(new_key) == public_pem(new_key.public_key())
    assert http.get(f"{server.url}/pki/public_key").text == server.public_key_pem != old
    response = post(http, server, client_key, stale)
    assert response.status_code == 400
    assert detail(response) == UNDECRYPTABLE
    assert post(http, server, client_key, chat()).status_code == 200


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "router.pem"
    first = DevServer(key_file=path, key_bits=2048)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    second = DevServer(key_file=path)
    assert second.fingerprint == first.fingerprint
    assert [p.name for p in path.parent.iterdir()] == ["router.pem"]  # no temporary left


def test_a_key_file_another_start_created_first_is_kept(tmp_path: Path) -> None:
    """Two routers starting on one --key-file: the second never replaces the first's key."""
    path = tmp_path / "keys" / "router.pem"
    assert _keystore._write_new(path, rsa_key(2048, 0)) is True
    first = path.read_bytes()
    assert _keystore._write_new(path, rsa_key(2048, 1)) is False  # it lost the race
    assert path.read_bytes() == first
    assert _keystore.load_or_create(path).private_numbers() == rsa_key(2048, 0).private_numbers()
    assert [p.name for p in path.parent.iterdir()] == ["router.pem"]


def test_key_file_readable_by_others_is_refused(
    tmp_path: Path, router_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "router.pem"
    path.write_bytes(
        router_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by others") as info:
        DevServer(key_file=path)
    assert info.value.hint == f"run `chmod 600 {path}`"
    os.chmod(path, 0o600)
    assert DevServer(key_file=path).public_key_pem == public_pem(router_key.public_key())
    path.write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        DevServer(key_file=path)


# --- TLS ---------------------------------------------------------------------------------------


def test_https_with_a_given_certificate(
    router_key: rsa.RSAPrivateKey, client_key: rsa.RSAPrivateKey, devserver_tls: TLSFiles
) -> None:
    with DevServer(
        key=router_key, tls_cert=devserver_tls.cert, tls_key=devserver_tls.key
    ) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=devserver_tls.context(), timeout=20, trust_env=False) as https:
            result = answer(post(https, server, client_key, chat()), client_key)
            assert result["choices"][0]["message"]["content"] == "echo: hello there"
        with (
            httpx.Client(timeout=5, trust_env=False) as untrusting,
            pytest.raises(httpx.ConnectError),
        ):
            untrusting.get(f"{server.url}/pki/public_key")  # self-signed: not trusted by default
        with httpx.Client(timeout=5, trust_env=False) as plain, pytest.raises(httpx.TransportError):
            plain.get(server.url.replace("https:", "http:") + "/pki/public_key")
        # A failed handshake did not take the server down.
        with httpx.Client(verify=devserver_tls.context(), timeout=20, trust_env=False) as https:
            assert https.get(f"{server.url}/pki/public_key").status_code == 200


def test_tls_needs_both_files(router_key: rsa.RSAPrivateKey, devserver_tls: TLSFiles) -> None:
    with pytest.raises(ValueError, match="both"):
        DevServer(key=router_key, tls_cert=devserver_tls.cert)
