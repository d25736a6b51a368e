"""HTTP for the client: the ``Transport`` seam, its own small HTTP/1.1 keep-alive pool, or a
caller's httpx client behind an adapter.

Why its own: a new process pays for its HTTP stack before its first answer, and httpx costs
about 45 ms to import, ~30 ms to build a client (the TLS context with the CA bundle, even for
``http://``) and ~15 ms more on the first request (anyio); this client only sends small bodies
and reads whole answers. Pass ``http_client=httpx.AsyncClient(...)`` for proxies, custom
certificates or HTTP/2: ``HttpxAdapter`` then does the same job through it. When the
environment sets a proxy (``HTTPS_PROXY``...), which httpx honours and the small pool does not,
the client uses httpx by itself.

Rules of this module:

- ``Transport`` is the one seam the request path (``_engine``) knows: both implementations here
  satisfy it, and so can a caller's (a recording wrapper, a test double). A caller's
  ``httpx.AsyncClient`` is wrapped by ``as_transport`` at the boundary; nothing else asks which
  class a transport is.
- Both return an ``Answer`` and raise only ``TransportError`` subclasses, whose ``retryable``
  is true only when the request provably never reached the router: the connection could not
  be opened, or it was found dead before one byte of the request was written. Anything later
  (a reset, an EOF without an answer, a timeout) may come after the router read and acted on
  the request, so it is final: resending could run a paid completion twice.
- A connection goes back to the pool only after a complete exchange that both sides left
  reusable; one that saw EOF while idle is dropped before reuse, so a request is never written
  into a connection the server already closed. Nothing is resent here: retries are the engine's.
- The TLS context is made on the first ``https`` request, unless one is given, from the CAs
  httpx would use: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else certifi's bundle.
- Answers larger than ``MAX_RESPONSE_BYTES`` (or a request's smaller ``limit``) are refused
  with ``AnswerTooLarge``, from ``Content-Length`` before the body is read, else as it streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import h11

from nomyo_agent import __version__
from nomyo_agent.protocol import MAX_ANSWER_BYTES

if TYPE_CHECKING:
    import httpx

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Answer",
    "AnswerTooLarge",
    "H11Pool",
    "HttpxAdapter",
    "Timeouts",
    "Transport",
    "TransportError",
    "as_transport",
    "default_http",
]

MAX_RESPONSE_BYTES = MAX_ANSWER_BYTES  # the agent sizes its Open frames to it
_DEFAULT_PORTS = {"http": 80, "https": 443}
_USER_AGENT = f"nomyo-client/{__version__}".encode()


class TransportError(Exception):
    """The exchange failed below HTTP; ``retryable``: the router provably never got it."""

    retryable: ClassVar[bool] = False


class NotSent(TransportError):
    """Not one byte of the request left this process: safe to send again."""

    retryable = True


class ConnectFailed(NotSent):
    """The connection could not be opened (refused, unreachable, TLS refused, timed out)."""


class TlsFailed(TransportError):
    """The TLS handshake failed: no TLS at the other end, or a certificate that does not verify.
    Nothing was sent, but trying again cannot help, so it is not retried."""


class NotTls(TlsFailed):
    """What answered the TLS handshake does not speak TLS (a plain HTTP server, most often)."""


def _tls_failure(exc: ssl.SSLError, message: str) -> TlsFailed:
    """The failure for an ``ssl.SSLError`` met while connecting (translated here, once)."""
    if exc.reason == "WRONG_VERSION_NUMBER":  # the answer to our ClientHello was not TLS
        return NotTls(message)
    return TlsFailed(message)


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` under an httpx connect error (httpx chains it through httpcore)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class Dropped(TransportError):
    """The connection broke after the request was (maybe partly) written, before an answer."""


class TimedOut(TransportError):
    """No answer in time: the router may still be working, so this is not retried."""


class ProtocolFailure(TransportError):
    """The other side does not speak HTTP/1.1 correctly."""


class AnswerTooLarge(ProtocolFailure):
    """The answer is (or announces itself as) larger than the caller's limit, by default
    ``MAX_RESPONSE_BYTES``: the router did act on the request, so it is never retried."""


@dataclass(frozen=True)
class Timeouts:
    connect: float | None = 10.0
    read: float | None = 600.0
    write: float | None = 600.0

    @classmethod
    def of(cls, value: float | httpx.Timeout | Timeouts | None) -> Timeouts:
        if value is None:
            return cls()
        if isinstance(value, Timeouts):
            return value
        if isinstance(value, (int, float)):
            return cls(connect=float(value), read=float(value), write=float(value))
        return cls(connect=value.connect, read=value.read, write=value.write)


@dataclass(frozen=True)
class Answer:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content: bytes


class Transport(Protocol):
    """What the client needs from HTTP: one exchange at a time per call, any number at once.

    ``request`` sends ``method`` to the absolute ``url`` with ``body`` (None: no body) and
    ``headers``, and returns the whole ``Answer``, whatever its status. It raises only
    ``TransportError`` subclasses: ``NotSent``/``ConnectFailed`` when not one byte left (the
    client may retry), ``Dropped`` or ``TimedOut`` once the request may have been read (never
    retried), ``AnswerTooLarge`` for an answer over ``limit`` (or ``MAX_RESPONSE_BYTES``),
    ``TlsFailed`` (``NotTls``: no TLS at the other end) when the handshake fails (not retried:
    trying again cannot help), ``ProtocolFailure`` for what is not HTTP. Concurrent calls must
    be safe. ``aclose`` releases
    the connections; the client calls it only on a transport it made itself.

    Example, a transport that notes each exchange and lets the client's own pool do the work::

        from nomyo_client import Answer, SecureChatCompletion
        from nomyo_client._transport import H11Pool

        class Noting:
            def __init__(self) -> None:
                self.pool, self.seen = H11Pool(), []

            async def request(self, method, url, body, headers, *, limit=None) -> Answer:
                answer = await self.pool.request(method, url, body, headers, limit=limit)
                self.seen.append((method, url, answer.status_code))
                return answer

            async def aclose(self) -> None:
                await self.pool.aclose()

        client = SecureChatCompletion(base_url, http_client=Noting())
    """

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        limit: int | None = None,
    ) -> Answer: ...

    async def aclose(self) -> None: ...


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
            raise _tls_failure(exc, f"TLS with {host}:{port} failed: {exc}") from exc
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
        if scheme not in _DEFAULT_PORTS:
            raise ProtocolFailure(f"unsupported URL scheme {scheme!r}")
        key = (scheme, host, parts.port or _DEFAULT_PORTS[scheme])
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
            cap = MAX_RESPONSE_BYTES if limit is None else min(limit, MAX_RESPONSE_BYTES)
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


class HttpxAdapter:
    """The same interface through an ``httpx.AsyncClient`` (closed here only if ``owned``)."""

    def __init__(self, client: httpx.AsyncClient, *, owned: bool = False) -> None:
        self.client = client
        self.owned = owned

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        limit: int | None = None,
    ) -> Answer:
        import httpx  # noqa: PLC0415 - the caller has imported it already

        cap = MAX_RESPONSE_BYTES if limit is None else min(limit, MAX_RESPONSE_BYTES)
        try:
            async with self.client.stream(method, url, content=body, headers=headers) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise AnswerTooLarge(f"the answer announces {int(declared)} bytes, over {cap}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        raise AnswerTooLarge(f"the answer is over {cap} bytes")
                    chunks.append(chunk)
        except httpx.ConnectError as exc:
            tls = _ssl_cause(exc)
            if tls is not None:
                raise _tls_failure(tls, str(exc) or str(tls)) from exc
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        except httpx.TimeoutException as exc:
            raise TimedOut(str(exc) or type(exc).__name__) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            # httpx cannot tell whether any of the request was written: treat it as sent.
            raise Dropped(str(exc) or type(exc).__name__) from exc
        except httpx.HTTPError as exc:
            raise ProtocolFailure(str(exc) or type(exc).__name__) from exc
        headers_out = {k.lower(): v for k, v in response.headers.items()}
        return Answer(response.status_code, headers_out, b"".join(chunks))

    async def aclose(self) -> None:
        if self.owned:
            await self.client.aclose()


# Settings the environment gives httpx (trust_env) that the small pool does not implement.
_HTTPX_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def as_transport(given: httpx.AsyncClient | Transport) -> Transport:
    """A caller's ``http_client``: an httpx client behind the adapter, a ``Transport`` as is."""
    # An httpx client can only come from a caller that imported httpx: no import of it here
    # (45 ms) for anyone else.
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(given, httpx.AsyncClient):
        return HttpxAdapter(given)
    return cast("Transport", given)  # the httpx case was handled just above


def default_http(timeouts: Timeouts) -> Transport:
    """The small pool, unless the environment asks for a proxy: then httpx."""
    if not any(os.environ.get(name) or os.environ.get(name.lower()) for name in _HTTPX_ENV):
        return H11Pool(timeouts)
    import httpx  # noqa: PLC0415 - only when the environment needs it

    timeout = httpx.Timeout(connect=timeouts.connect, read=timeouts.read,
                            write=timeouts.write, pool=timeouts.connect)  # fmt: skip
    return HttpxAdapter(httpx.AsyncClient(timeout=timeout), owned=True)
