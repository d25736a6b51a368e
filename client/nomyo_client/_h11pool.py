"""The client's own transport: a small HTTP/1.1 keep-alive pool (h11 on asyncio).

Why its own: a new process pays for its HTTP stack before its first answer, and httpx costs
about 45 ms to import, ~30 ms to build a client (the TLS context with the CA bundle, even for
``http://``) and ~15 ms more on the first request (anyio); this client only sends small bodies
and reads whole answers. It implements ``_transport.Transport``.

Rules of this module:

- A connection goes back to the pool only after a complete exchange that both sides left
  reusable; one that saw EOF while idle is dropped before reuse, so a request is never written
  into a connection the server already closed.
- The TLS context is made on the first ``https`` request, unless one is given, from the CAs
  httpx would use: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else certifi's bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import urllib.parse
from typing import Any

import h11

from nomyo_agent import __version__
from nomyo_agent.origins import DEFAULT_PORTS
from nomyo_client._transport import (
    Answer,
    AnswerTooLarge,
    ConnectFailed,
    Dropped,
    NotSent,
    ProtocolFailure,
    TimedOut,
    Timeouts,
    answer_cap,
    tls_failure,
)

__all__ = ["H11Pool"]

_USER_AGENT = f"nomyo-client/{__version__}".encode()


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=1 << 20)

    @property
    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())


async def _within(timeout: float | None, what: Any) -> Any:
    try:
        return await asyncio.wait_for(what, timeout)
    except TimeoutError as exc:
        raise TimedOut(f"no progress within {timeout:g} s") from exc


class H11Pool:
    """Keep-alive HTTP/1.1 connections per (scheme, host, port); see the module rules."""

    def __init__(
        self,
        timeouts: Timeouts | None = None,
        max_idle_per_host: int = 32,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._max_idle = max_idle_per_host
        self._ssl = ssl_context
        self._closed = False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            # As httpx chooses (trust_env): SSL_CERT_FILE, else SSL_CERT_DIR, else certifi.
            cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
            if cafile:
                self._ssl = ssl.create_default_context(cafile=cafile)
            elif capath:
                self._ssl = ssl.create_default_context(capath=capath)
            else:
                import certifi  # noqa: PLC0415 - only for https, and only once

                self._ssl = ssl.create_default_context(cafile=certifi.where())
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        tls = self._tls() if scheme == "https" else None
        opening = asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls else None, limit=1 << 20
        )
        try:
            reader, writer = await asyncio.wait_for(opening, self.timeouts.connect)
        except TimeoutError as exc:
            raise ConnectFailed(f"connecting to {host}:{port} timed out") from exc
        except ssl.SSLError as exc:  # before OSError, its base
            raise tls_failure(exc, f"TLS with {host}:{port} failed: {exc}") from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
        return _Conn(reader, writer)

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        limit: int | None = None,
    ) -> Answer:
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        if scheme not in DEFAULT_PORTS:
            raise ProtocolFailure(f"unsupported URL scheme {scheme!r}")
        key = (scheme, host, parts.port or DEFAULT_PORTS[scheme])
        idle = self._idle.get(key, [])
        if idle:
            # One turn of the loop reads an EOF that is already waiting: once a request is
            # written, a drop is final (the router may have read it), so a connection the
            # server closed while idle must be seen dead now, not after the write.
            await asyncio.sleep(0)
        conn = None
        while idle and conn is None:
            candidate = idle.pop()
            if candidate.usable:
                conn = candidate
            else:
                candidate.writer.close()
        if conn is None:
            conn = await self._connect(*key)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [(b"Host", parts.netloc.rpartition("@")[2].encode()), (b"User-Agent", _USER_AGENT),
                (b"Accept", b"*/*"), (b"Accept-Encoding", b"identity")]  # fmt: skip
        head += [(k.encode(), v.encode()) for k, v in headers.items()]
        if body is not None or method == "POST":
            head.append((b"Content-Length", str(len(body or b"")).encode()))
        try:
            cap = answer_cap(limit)
            answer = await self._exchange(conn, h11.Request(method=method, target=target,
                                                            headers=head), body, cap)  # fmt: skip
        except BaseException:
            conn.writer.close()
            raise
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            pool = self._idle.setdefault(key, [])
            if self._closed or len(pool) >= self._max_idle:
                conn.writer.close()
            else:
                pool.append(conn)
        else:
            conn.writer.close()
        return answer

    async def _exchange(
        self, conn: _Conn, request: h11.Request, body: bytes | None, cap: int
    ) -> Answer:
        out = conn.h11.send(request) or b""
        if body:
            out += conn.h11.send(h11.Data(data=body)) or b""
        out += conn.h11.send(h11.EndOfMessage()) or b""
        if not conn.usable:  # died between the pool's check and now: nothing was written
            raise NotSent("the connection was closed before the request was written")
        try:
            conn.writer.write(out)
            await _within(self.timeouts.write, conn.writer.drain())
        except OSError as exc:
            raise Dropped(f"the connection broke while sending: {exc}") from exc
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                if response is None:  # bytes came, but not an HTTP response head
                    raise ProtocolFailure(f"the server's answer is not HTTP/1.1: {exc}") from exc
                raise Dropped(f"the server closed the connection mid-answer: {exc}") from exc
            if event is h11.NEED_DATA:
                try:
                    data = await _within(self.timeouts.read, conn.reader.read(65536))
                except OSError as exc:
                    raise Dropped(f"the connection broke: {exc}") from exc
                if not data and response is None:
                    raise Dropped("the stream ended before any answer byte")
                conn.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
                declared = dict(event.headers).get(b"content-length")
                if declared is not None and int(declared) > cap:  # h11 checked it is a number
                    raise AnswerTooLarge(f"the answer announces {int(declared)} bytes, over {cap}")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > cap:
                    raise AnswerTooLarge(f"the answer is over {cap} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert response is not None  # h11 yields Response before Data or EndOfMessage
        headers: dict[str, str] = {}
        for name, value in response.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return Answer(response.status_code, headers, b"".join(chunks))

    async def aclose(self) -> None:
        self._closed = True
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            conn.writer.close()
        for conn in conns:
            with contextlib.suppress(OSError, ssl.SSLError):
                await conn.writer.wait_closed()
