"""Hostile and odd input never escapes the client's exception tree, and nothing leaves the process
for a request that is refused: a real agent (which must see no seal) and a real router (which must
see no connection), or a loopback router that serves a key too large to be one."""

from __future__ import annotations

import asyncio
import decimal
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import nomyo_client as nc
from nomyo_client import _wire
from nomyo_client._routerkey import rsa_bits
from nomyo_devserver import DevServer
from support.agent import RunningAgent

PROMPT = [{"role": "user", "content": "hi"}]


def nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


# (what create() gets, the start of the message): every one is refused before any I/O. The
# public client's json.dumps raises TypeError (set, bytes, Decimal) or RecursionError for some,
# sends invalid JSON for NaN, and escapes a lone surrogate that a router cannot decode.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "lone-surrogate": (
        {"messages": [{"role": "user", "content": "half a pair: \ud800"}]},
        "the request holds a lone surrogate",
    ),
    "nested-5000": ({"metadata": nested(5000)}, "the request is nested too deeply"),
    "circular": ({"metadata": circular()}, "the request refers to itself"),
    "set": ({"stop": {"a", "b"}}, "the request holds a value of type set,"),
    "bytes": ({"user": b"me"}, "the request holds a value of type bytes,"),
    "decimal": (
        {"temperature": decimal.Decimal("0.7")},
        "the request holds a value of type Decimal,",
    ),
    "nan": ({"temperature": float("nan")}, "the request holds NaN or an infinity"),
    "infinity": ({"top_p": float("-inf")}, "the request holds NaN or an infinity"),
    "object-key": ({"logit_bias": {(1, 2): 5}}, "the request holds a tuple"),
    "api-key-crlf": ({"api_key": "sk-1\r\nX-Injected: yes"}, "the api_key cannot be sent"),
    "api-key-nul": ({"api_key": "sk-\x00"}, "the api_key cannot be sent"),
    "api-key-non-ascii": ({"api_key": "sk-é"}, "the api_key cannot be sent"),
    "bad-port": ({"base_url": "http://127.0.0.1:99999"}, "not a usable router URL"),
    "port-not-a-number": ({"base_url": "http://127.0.0.1:http"}, "not a usable router URL"),
    "no-host": ({"base_url": "http://:8080"}, "not a usable router URL"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_in_the_tree_before_anything_leaves(
    ready_agent: RunningAgent, router: DevServer, case: str
) -> None:
    kwargs, message = REFUSED[case]

    async def go() -> None:
        async with nc.SecureChatCompletion(
            router.url, allow_http=True, agent_socket=ready_agent.path, autostart=False
        ) as client:
            with pytest.raises(nc.InvalidRequestError) as info:
                await client.create(model="devserver/echo", **{"messages": PROMPT, **kwargs})
        assert info.value.message.startswith(message), info.value.message
        assert info.value.message == info.value.message.splitlines()[0]
        assert info.value.hint

    asyncio.run(go())
    assert router.stats() == {}  # not even a connection
    counters = ready_agent.status().counters
    assert (counters.seals, counters.errors) == (0, 0)


def test_what_the_public_client_sends_is_sent_alike(ready_agent: RunningAgent) -> None:
    # Values json.dumps (the public client's encoder) turns into valid JSON go out the same way:
    # tuples as arrays, int, float, bool and None keys as strings, non-ASCII text as itself.
    params = {"stop": ("a", "b"), "logit_bias": {1: 5, 2.5: 1, False: 0, None: 2}, "user": "é✓"}
    body = _wire.build_payload("m", PROMPT, params)
    assert json.loads(body) == json.loads(json.dumps({"model": "m", "messages": PROMPT, **params}))
    assert "é✓" in body.decode("utf-8")


def big_key_pem(bits: int) -> bytes:
    numbers = rsa.RSAPublicNumbers(65537, secrets.randbits(bits) | (1 << (bits - 1)) | 1)
    return numbers.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def serve_key(head: bytes, body: bytes) -> tuple[asyncio.AbstractServer, str, list[int]]:
    """A loopback router whose /pki/public_key answers ``head`` then ``body``, then stalls."""
    requests: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                requests.append(1)
                writer.write(head + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", requests


def test_router_key_over_16384_bits_never_reaches_the_agent(ready_agent: RunningAgent) -> None:
    pem = big_key_pem(16400)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(pem)

    async def go() -> None:
        server, url, _ = await serve_key(head, pem)
        async with (
            server,
            nc.SecureChatCompletion(
                url, allow_http=True, agent_socket=ready_agent.path, autostart=False, max_retries=0
            ) as client,
        ):
            with pytest.raises(nc.SecurityError) as info:
                await client.create(model="m", messages=PROMPT)
        assert info.value.message == (
            "the router's public key has 16400 bits, over the 16384 this client accepts"
        )

    asyncio.run(go())
    counters = ready_agent.status().counters
    assert (counters.seals, counters.errors) == (0, 0)


@pytest.mark.parametrize("http", ["own", "httpx"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_huge_router_key_answer_refused_without_downloading_it(
    ready_agent: RunningAgent, framing: str, http: str
) -> None:
    # 60 MiB announced, a few bytes sent, then nothing: a client that reads before it checks
    # waits here for the rest (or downloads all of it from a router that sends it).
    if framing == "content-length":
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (60 << 20)
        body = b"-----BEGIN PUBLIC KEY-----\n"
    else:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"%x\r\n%s\r\n" % (256 << 10, b"A" * (256 << 10))

    async def go() -> float:
        server, url, requests = await serve_key(head, body)
        given = httpx.AsyncClient(timeout=20) if http == "httpx" else None
        async with server, nc.SecureChatCompletion(
            url, allow_http=True, agent_socket=ready_agent.path, autostart=False, timeout=20,
            http_client=given,
        ) as client:  # fmt: skip
            started = time.monotonic()
            with pytest.raises(nc.SecurityError, match="too large to be a key"):
                await client.create(model="m", messages=PROMPT)
        if given is not None:
            await given.aclose()
        assert len(requests) == 1  # a final answer: not retried
        return time.monotonic() - started

    assert asyncio.run(go()) < 5.0
    assert ready_agent.status().counters.seals == 0


def test_router_key_size_is_read_without_cryptography_and_only_measured() -> None:
    def pem(key: Any) -> str:
        return str(
            key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
        )

    for bits in (2048, 3072):
        assert rsa_bits(pem(rsa.generate_private_key(65537, bits).public_key())) == bits
    assert rsa_bits(big_key_pem(16400).decode()) == 16400
    # What it cannot read, it leaves to the agent's own checks rather than refusing.
    assert rsa_bits(pem(ec.generate_private_key(ec.SECP256R1()).public_key())) is None
    assert rsa_bits("not a key") is None
    assert rsa_bits("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n") is None
    truncated = pem(rsa.generate_private_key(65537, 2048).public_key()).splitlines()
    assert rsa_bits("\n".join([*truncated[:3], truncated[-1]])) is None
