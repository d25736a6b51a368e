"""The client's own HTTP/1.1 pool (``_transport.H11Pool``) against real sockets: keep-alive reuse,
a server that closes idle connections, chunked answers, garbage, oversized answers, timeouts,
refused connections, and TLS with and without a trusted certificate."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

import nomyo_client as nc
from nomyo_client import _transport
from nomyo_client._transport import H11Pool, Timeouts
from nomyo_devserver import DevServer
from support.agent import RunningAgent

OVER_TLS = [{"role": "user", "content": "over tls"}]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


async def with_server(handler: Handler, body: Callable[[str], Awaitable[Any]]) -> Any:
    accepted: list[int] = []

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(counting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await body(f"http://127.0.0.1:{port}"), len(accepted)
    finally:
        server.close()
        await server.wait_closed()


def test_keep_alive_reuses_one_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def body(url: str) -> list[bytes]:
        pool = H11Pool()
        answers = [(await pool.request("POST", url + "/x", b"abc", {})).content for _ in range(5)]
        await pool.aclose()
        return answers

    answers, connections = asyncio.run(with_server(handler, body))
    assert answers == [b"ok"] * 5
    assert connections == 1


def test_connection_closed_while_idle_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # Keep-alive by the headers, then closed anyway, as servers do after an idle timeout.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async def body(url: str) -> list[int]:
        pool = H11Pool()
        statuses = []
        for _ in range(3):
            statuses.append((await pool.request("GET", url + "/", None, {})).status_code)
            await asyncio.sleep(0.05)  # the EOF arrives while the connection sits in the pool
        await pool.aclose()
        return statuses

    statuses, connections = asyncio.run(with_server(handler, body))
    assert statuses == [200, 200, 200]
    assert connections == 3


def test_chunked_answer_and_headers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n"
                     b"X-A: 1\r\nX-A: 2\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n")  # fmt: skip
        await writer.drain()

    async def body(url: str) -> _transport.Answer:
        pool = H11Pool()
        try:
            return await pool.request("GET", url + "/", None, {})
        finally:
            await pool.aclose()

    answer, _ = asyncio.run(with_server(handler, body))
    assert (answer.status_code, answer.content) == (429, b"abcdef")
    assert answer.headers["retry-after"] == "3"
    assert answer.headers["x-a"] == "1, 2"


@pytest.mark.parametrize(
    ("reply", "error", "retryable"),
    [
        (b"this is not http\r\n\r\n", _transport.ProtocolFailure, False),
        # The request was read: the router may have acted on it, so neither is retryable.
        (b"", _transport.Dropped, False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", _transport.Dropped, False),
    ],
)
def test_bad_answers(reply: bytes, error: type[Exception], retryable: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async def body(url: str) -> None:
        pool = H11Pool()
        try:
            with pytest.raises(error) as info:
                await pool.request("POST", url + "/", b"{}", {})
            assert info.value.retryable is retryable  # type: ignore[attr-defined]
        finally:
            await pool.aclose()

    asyncio.run(with_server(handler, body))


def test_oversized_answer_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_transport, "MAX_RESPONSE_BYTES", 1000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        await writer.drain()

    async def body(url: str) -> None:
        pool = H11Pool()
        with pytest.raises(_transport.AnswerTooLarge, match="5000 bytes, over 1000"):
            await pool.request("GET", url + "/", None, {})
        await pool.aclose()

    asyncio.run(with_server(handler, body))


def test_read_timeout_is_not_retryable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def body(url: str) -> None:
        pool = H11Pool(Timeouts(connect=5, read=0.2, write=5))
        with pytest.raises(_transport.TimedOut) as info:
            await pool.request("GET", url + "/", None, {})
        assert info.value.retryable is False
        await pool.aclose()

    asyncio.run(with_server(handler, body))


def test_refused_connection_is_retryable() -> None:
    async def body() -> None:
        pool = H11Pool()
        with pytest.raises(_transport.ConnectFailed) as info:
            await pool.request("GET", "http://127.0.0.1:9/", None, {})
        assert info.value.retryable is True

    asyncio.run(body())


@pytest.fixture
def tls_router(devserver_tls: Any) -> Iterator[tuple[DevServer, Any]]:
    with DevServer(key_bits=2048, tls_cert=devserver_tls.cert, tls_key=devserver_tls.key) as s:
        yield s, devserver_tls


def test_tls_untrusted_certificate_refused_trusted_one_works(
    tls_router: tuple[DevServer, Any], agent: RunningAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    router, files = tls_router
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    assert router.url.startswith("https://")
    agent.keygen(bits=2048)

    async def go() -> dict[str, Any]:
        client = nc.SecureChatCompletion(router.url, agent_socket=agent.path, autostart=False,
                                         max_retries=0)  # fmt: skip
        with pytest.raises(nc.APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.create(model="devserver/echo", messages=[{"role": "user", "content": "x"}])
        await client.aclose()
        trusted = ssl.create_default_context(cafile=str(files.ca))
        pool = H11Pool(ssl_context=trusted)
        async with nc.SecureChatCompletion(
            router.url, agent_socket=agent.path, autostart=False,
            http_client=pool,  # type: ignore[arg-type]
        ) as ours:  # fmt: skip
            answer = await ours.create(model="devserver/echo", messages=OVER_TLS)
        await pool.aclose()
        async with (
            httpx.AsyncClient(verify=trusted) as http,
            nc.SecureChatCompletion(
                router.url, agent_socket=agent.path, autostart=False, http_client=http
            ) as theirs,
        ):
            again = await theirs.create(model="devserver/echo", messages=OVER_TLS)
        assert again["choices"] == answer["choices"]
        # The default client trusts SSL_CERT_FILE, as httpx does.
        monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))
        async with nc.SecureChatCompletion(
            router.url, agent_socket=agent.path, autostart=False
        ) as default:
            third = await default.create(model="devserver/echo", messages=OVER_TLS)
            assert isinstance(default._engine._state.http, H11Pool)  # type: ignore[union-attr]
        assert third["choices"] == answer["choices"]
        return answer

    assert asyncio.run(go())["choices"][0]["message"]["content"] == "echo: over tls"


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "http_proxy"])
def test_environment_asking_for_a_proxy_gets_httpx(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    assert isinstance(_transport.default_http(Timeouts()), H11Pool)
    monkeypatch.setenv(name, "http://proxy.invalid:3128")
    chosen = _transport.default_http(Timeouts(connect=3, read=7, write=7))
    assert isinstance(chosen, _transport.HttpxAdapter)
    assert chosen.owned
    assert chosen.client.timeout.read == 7
    asyncio.run(chosen.aclose())
