"""The client's ``Transport`` seam against real sockets.

``TestTransportContract`` is what every transport must do, run against both that the client
ships: its own HTTP/1.1 pool (``H11Pool``) and the adapter over a caller's ``httpx.AsyncClient``
(``HttpxAdapter``). Each test talks to a tiny real HTTP server on 127.0.0.1 scripted for it:
keep-alive reuse, a server that closes idle connections, status, headers and body passed
through, the answer size cap, timeouts, refused connections, a server closing mid-answer,
garbage, and concurrent use. After the class: what only one of them does (TLS set-up of the own
pool, the choice of the default transport).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

import nomyo_client as nc
from nomyo_agent.protocol import MAX_ANSWER_BYTES
from nomyo_client import _transport
from nomyo_client._h11pool import H11Pool
from nomyo_client._httpx_adapter import HttpxAdapter, as_transport, default_http
from nomyo_client._transport import Timeouts
from nomyo_devserver import DevServer
from support.agent import RunningAgent

OVER_TLS = [{"role": "user", "content": "over tls"}]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MakeTransport = Callable[..., nc.Transport]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (by its Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            body = await reader.readexactly(int(line.split(b":")[1]))
    return head, body


async def with_server(handler: Handler, body: Callable[[str], Awaitable[Any]]) -> Any:
    """``body(url)`` against a server running ``handler`` per connection; returns what ``body``
    returned and how many connections the server accepted."""
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


def answering(reply: bytes) -> Handler:
    """A server that answers every request on a connection with ``reply``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(reply)
            await writer.drain()

    return handler


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def own_pool(timeouts: Timeouts) -> nc.Transport:
    return H11Pool(timeouts)


def httpx_adapter(timeouts: Timeouts) -> nc.Transport:
    timeout = httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.write,
                            pool=timeouts.connect)  # fmt: skip
    return HttpxAdapter(httpx.AsyncClient(timeout=timeout), owned=True)


class TestTransportContract:
    """Every ``Transport`` the client ships passes these; see the module docstring."""

    @pytest.fixture(params=[own_pool, httpx_adapter], ids=["h11pool", "httpx"])
    def make(self, request: pytest.FixtureRequest) -> MakeTransport:
        def make(timeouts: Timeouts | None = None) -> nc.Transport:
            factory: Callable[[Timeouts], nc.Transport] = request.param
            return factory(timeouts or Timeouts(connect=5, read=10, write=5))

        return make

    @staticmethod
    def exchange(make: MakeTransport, handler: Handler, run: Callable[..., Awaitable[Any]],
                 **options: Any) -> tuple[Any, int]:  # fmt: skip
        """``run(transport, url)`` against ``handler``'s server; closes the transport."""

        async def body(url: str) -> Any:
            transport = make(**options)
            try:
                return await run(transport, url)
            finally:
                await transport.aclose()

        result: tuple[Any, int] = asyncio.run(with_server(handler, body))
        return result

    def test_keep_alive_reuses_one_connection(self, make: MakeTransport) -> None:
        bodies: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                bodies.append((await read_request(reader))[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        async def run(t: nc.Transport, url: str) -> list[bytes]:
            return [(await t.request("POST", url + "/x", b"abc", {})).content for _ in range(5)]

        answers, connections = self.exchange(make, handler, run)
        assert answers == [b"ok"] * 5
        assert bodies == [b"abc"] * 5
        assert connections == 1

    def test_connection_closed_while_idle_is_not_reused(self, make: MakeTransport) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            # Keep-alive by the headers, then closed anyway, as servers do after an idle timeout.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

        async def run(t: nc.Transport, url: str) -> list[int]:
            statuses = []
            for _ in range(3):
                statuses.append((await t.request("GET", url + "/", None, {})).status_code)
                await asyncio.sleep(0.05)  # the EOF arrives while the connection sits idle
            return statuses

        statuses, connections = self.exchange(make, handler, run)
        assert statuses == [200, 200, 200]
        assert connections == 3

    def test_status_headers_and_body_pass_through(self, make: MakeTransport) -> None:
        heads: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head, body = await read_request(reader)
            heads.append(head + body)
            writer.write(b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\n"
                         b"Retry-After: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
                         b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n")  # fmt: skip
            await writer.drain()

        async def run(t: nc.Transport, url: str) -> nc.Answer:
            headers = {"X-Payload-ID": "p-1", "Content-Type": "application/octet-stream"}
            return await t.request("POST", url + "/v1/chat/secure_completion", b"{}", headers)

        answer, _ = self.exchange(make, handler, run)
        assert (answer.status_code, answer.content) == (429, b"abcdef")
        assert answer.headers["retry-after"] == "3"
        assert answer.headers["x-a"] == "1, 2"  # repeated headers joined, names lower-case
        sent = heads[0].lower()
        assert sent.startswith(b"post /v1/chat/secure_completion http/1.1\r\n")
        assert b"\r\nx-payload-id: p-1\r\n" in sent
        assert b"\r\ncontent-type: application/octet-stream\r\n" in sent
        assert sent.endswith(b"\r\n\r\n{}")

    @pytest.mark.parametrize(
        "reply",
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"3e8\r\n"
            + b"x" * 1000
            + b"\r\n"
            + b"1\r\nx\r\n0\r\n\r\n",
        ],
        ids=["announced", "streamed"],
    )
    def test_answer_over_the_limit_is_refused(self, make: MakeTransport, reply: bytes) -> None:
        async def run(t: nc.Transport, url: str) -> None:
            assert (await t.request("GET", url + "/", None, {}, limit=5000)).content
            with pytest.raises(_transport.AnswerTooLarge, match="over 1000") as info:
                await t.request("GET", url + "/", None, {}, limit=1000)
            assert info.value.retryable is False  # the router answered: it acted

        self.exchange(make, answering(reply), run)

    def test_answer_over_the_client_cap_is_refused_before_its_body(
        self, make: MakeTransport
    ) -> None:
        assert _transport.MAX_RESPONSE_BYTES == MAX_ANSWER_BYTES  # what the agent opens
        over = MAX_ANSWER_BYTES + 1

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % over)
            await writer.drain()
            await reader.read()  # no body comes: the client must refuse from the head alone

        async def run(t: nc.Transport, url: str) -> None:
            with pytest.raises(_transport.AnswerTooLarge, match=f"{over} bytes"):
                await t.request("GET", url + "/", None, {})

        self.exchange(make, handler, run)

    def test_read_timeout_is_final(self, make: MakeTransport) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await asyncio.sleep(10)

        async def run(t: nc.Transport, url: str) -> None:
            with pytest.raises(_transport.TimedOut) as info:
                await t.request("GET", url + "/", None, {})
            assert info.value.retryable is False

        self.exchange(make, handler, run, timeouts=Timeouts(connect=5, read=0.2, write=5))

    def test_write_timeout_is_final(self, make: MakeTransport) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(10)  # reads nothing: the client's send buffer fills up

        async def run(t: nc.Transport, url: str) -> None:
            with pytest.raises(_transport.TimedOut) as info:
                await t.request("POST", url + "/", b"x" * (64 * 1024 * 1024), {})
            assert info.value.retryable is False  # part of the request may have been read

        self.exchange(make, handler, run, timeouts=Timeouts(connect=5, read=5, write=0.3))

    def test_refused_connection_is_retryable(self, make: MakeTransport) -> None:
        async def run() -> None:
            transport = make()
            try:
                with pytest.raises(_transport.ConnectFailed) as info:
                    await transport.request("GET", f"http://127.0.0.1:{closed_port()}/", None, {})
                assert info.value.retryable is True
            finally:
                await transport.aclose()

        asyncio.run(run())

    @pytest.mark.parametrize(
        "reply",
        [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
        ids=["before-the-head", "mid-body"],
    )
    def test_server_closing_mid_answer_is_a_final_drop(
        self, make: MakeTransport, reply: bytes
    ) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(reply)
            await writer.drain()

        async def run(t: nc.Transport, url: str) -> None:
            # The request was read: the router may have acted on it, so it is never resent.
            with pytest.raises(_transport.Dropped) as info:
                await t.request("POST", url + "/", b"{}", {})
            assert info.value.retryable is False

        self.exchange(make, handler, run)

    def test_garbage_is_a_final_transport_error(self, make: MakeTransport) -> None:
        async def run(t: nc.Transport, url: str) -> None:
            with pytest.raises(nc.TransportError) as info:
                await t.request("POST", url + "/", b"{}", {})
            assert info.value.retryable is False

        self.exchange(make, answering(b"this is not http\r\n\r\n"), run)

    def test_tls_to_a_plain_http_server_is_a_final_tls_failure(self, make: MakeTransport) -> None:
        async def run(t: nc.Transport, url: str) -> None:
            https = url.replace("http://", "https://")
            with pytest.raises(_transport.NotTls) as info:
                await t.request("GET", https + "/pki/public_key", None, {})
            assert isinstance(info.value, _transport.TlsFailed)
            assert info.value.retryable is False  # trying again cannot help

        _, connections = self.exchange(make, plain_http_at_once, run)
        assert connections == 1

    def test_concurrent_requests_each_get_their_own_answer(self, make: MakeTransport) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head, _ = await read_request(reader)
                path = head.split(b" ")[1]
                await asyncio.sleep(0.01 * (len(path) % 3))  # answers finish out of order
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(path), path))  # fmt: skip
                await writer.drain()

        async def run(t: nc.Transport, url: str) -> list[bytes]:
            paths = [f"/{'n' * i}" for i in range(1, 17)]
            answers = await asyncio.gather(*(t.request("GET", url + p, None, {}) for p in paths))
            assert [a.content.decode() for a in answers] == paths
            return [a.content for a in answers]

        answers, connections = self.exchange(make, handler, run)
        assert len(answers) == 16
        assert 1 <= connections <= 16


def test_the_garbage_is_named_by_the_own_pool() -> None:
    # httpx cannot tell garbage from a drop; the own pool says what it got.
    async def run(url: str) -> None:
        pool = H11Pool()
        try:
            with pytest.raises(_transport.ProtocolFailure, match=r"not HTTP/1\.1"):
                await pool.request("POST", url + "/", b"{}", {})
        finally:
            await pool.aclose()

    asyncio.run(with_server(answering(b"this is not http\r\n\r\n"), run))


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
            router.url, agent_socket=agent.path, autostart=False, http_client=pool
        ) as ours:
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
    assert isinstance(default_http(Timeouts()), H11Pool)
    monkeypatch.setenv(name, "http://proxy.invalid:3128")
    chosen = default_http(Timeouts(connect=3, read=7, write=7))
    assert isinstance(chosen, HttpxAdapter)
    assert chosen.owned
    assert chosen.client.timeout.read == 7
    asyncio.run(chosen.aclose())


def test_a_callers_httpx_client_is_adapted_and_any_transport_kept() -> None:
    pool = H11Pool()
    assert as_transport(pool) is pool
    client = httpx.AsyncClient()
    adapted = as_transport(client)
    assert isinstance(adapted, HttpxAdapter)
    assert adapted.client is client
    assert not adapted.owned  # the caller closes their own client
    asyncio.run(client.aclose())


async def plain_http_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A plain HTTP server that answers before reading: what a TLS client meets at it."""
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    await reader.read()


@pytest.mark.parametrize("http", ["own", "httpx"])
def test_https_to_a_plain_http_router_is_a_tls_error_with_the_hint(http: str) -> None:
    async def body(url: str) -> nc.APIError:
        https = url.replace("http://", "https://")
        given = httpx.AsyncClient() if http == "httpx" else None
        client = nc.SecureChatCompletion(https, http_client=given, agent_socket="/nonexistent",
                                         autostart=False, max_retries=2)  # fmt: skip
        try:
            with pytest.raises(nc.TLSError) as info:
                await client.create(model="m", messages=[{"role": "user", "content": "x"}])
        finally:
            await client.aclose()
            if given is not None:
                await given.aclose()
        return info.value

    error, connections = asyncio.run(with_server(plain_http_at_once, body))
    assert isinstance(error, nc.APIConnectionError)
    assert error.plain_http
    assert connections == 1  # a failed handshake is not tried again
    assert "does not speak TLS" in (error.hint or ""), error.hint
    assert "with allow_http=True" in (error.hint or "")
