"""The default HTTP transport: HTTP/1.1 keep-alive on asyncio streams with h11.

Why not httpx's own: a new process pays for it before its first answer (the TLS context with
the CA bundle is built when the client is made, ~30 ms, even for ``http://``; anyio is imported
on the first request, ~15 ms), and this client only ever sends small bodies and reads whole
answers. A caller's ``http_client`` (proxies, custom certificates, HTTP/2) replaces this.

Rules of this module:

- A connection goes back to the pool only after a complete exchange that both sides left
  reusable; one that saw EOF while idle is dropped before reuse, so a request is never sent
  into a connection the server already closed. Nothing is resent here (retries are the
  engine's business).
- The TLS context (certifi's CA bundle, as httpx uses) is made on the first ``https`` request.
- Failures are raised as the httpx exceptions httpx's own transport would raise, with the
  request attached, and answers larger than ``MAX_RESPONSE_BYTES`` are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import h11
import httpx

__all__ = ["MAX_RESPONSE_BYTES", "H11Transport"]

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_Key = tuple[str, str, int]


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    @property
    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


def _timeout(request: httpx.Request, which: str) -> float | None:
    value = request.extensions.get("timeout", {}).get(which)
    return None if value is None else float(value)


class H11Transport(httpx.AsyncBaseTransport):
    """A small keep-alive pool per (scheme, host, port); see the module rules."""

    def __init__(self, max_idle_per_host: int = 32) -> None:
        self._idle: dict[_Key, list[_Conn]] = {}
        self._max_idle = max_idle_per_host
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            import certifi  # noqa: PLC0415 - only for https, and only once

            self._ssl = ssl.create_default_context(cafile=certifi.where())
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def _connect(self, request: httpx.Request, key: _Key) -> _Conn:
        scheme, host, port = key
        tls = self._tls() if scheme == "https" else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=2**20
                ),
                _timeout(request, "connect"),
            )
        except asyncio.TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Conn(reader, writer)

    async def _acquire(self, request: httpx.Request, key: _Key) -> _Conn:
        idle = self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return await self._connect(request, key)

    def _release(self, key: _Key, conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self._max_idle:
            conn.close()
        else:
            idle.append(conn)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        key = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        body = await request.aread()
        conn = await self._acquire(request, key)
        try:
            response = await self._exchange(conn, request, body)
        except BaseException:
            conn.close()
            raise
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._release(key, conn)
        else:
            conn.close()
        return response

    async def _exchange(self, conn: _Conn, request: httpx.Request, body: bytes) -> httpx.Response:
        target = request.url.raw_path
        events: list[Any] = [
            h11.Request(method=request.method, target=target, headers=request.headers.raw)
        ]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        try:
            conn.writer.write(b"".join(conn.h11.send(e) or b"" for e in events))
            await asyncio.wait_for(conn.writer.drain(), _timeout(request, "write"))
        except asyncio.TimeoutError as exc:
            raise httpx.WriteTimeout("sending the request timed out", request=request) from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        read_timeout = _timeout(request, "read")
        head: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=request) from exc
            if event is h11.NEED_DATA:
                try:
                    data = await asyncio.wait_for(conn.reader.read(65536), read_timeout)
                except asyncio.TimeoutError as exc:
                    raise httpx.ReadTimeout(
                        "the server did not answer in time", request=request
                    ) from exc
                except OSError as exc:
                    raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
                if not data and head is None:
                    raise httpx.RemoteProtocolError(
                        "server disconnected without sending a response", request=request
                    )
                conn.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE_BYTES:
                    raise httpx.RemoteProtocolError("the answer is too large", request=request)
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if head is None:
            raise httpx.RemoteProtocolError("no response from the server", request=request)
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            content=b"".join(chunks),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": bytes(head.reason)},
        )

    async def aclose(self) -> None:
        self._closed = True
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(OSError, ssl.SSLError):
                await conn.writer.wait_closed()
