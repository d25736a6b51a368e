"""``DevServer``: the router of ``_router`` on a real socket, HTTP/1.1 with keep-alive.

Rules of this module:

- The stdlib ``ThreadingHTTPServer``, one thread per connection, ``protocol_version
  = "HTTP/1.1"`` so connections are kept alive, and ``TCP_NODELAY`` (``disable_nagle_algorithm``)
  so that a small answer is never held back waiting for an ACK: pooling clients depend on both.
  Headers and body leave in one buffered write.
- The body size is checked from ``Content-Length`` before the body is kept: a larger one is a
  413 and the connection is closed. A moderately larger body (up to 4x the cap, at least 64 MiB)
  is read and discarded first, because a client still writing its body when we close would see
  a connection reset instead of the 413; anything larger is not read at all. A body without
  ``Content-Length`` is a 411.
- TLS is set up per connection in that connection's thread, so a slow or broken handshake never
  stalls the accept loop.
- ``stop`` ends the accept loop, then shuts down every kept-alive connection, so no thread is
  left blocked on an idle client.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from nomyo_devserver._router import Reply, Router, error

__all__ = ["DEFAULT_MAX_BODY", "HTTPServer"]

# The public client refuses plaintexts over 10 MiB; base64 makes that 13.4 MiB of package.
DEFAULT_MAX_BODY = 16 * 1024 * 1024
_DRAIN_MAX = 64 * 1024 * 1024
_PATHS = ("/", "/pki/public_key", "/v1/chat/secure_completion", "/devserver/stats")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and a small body in one send
    timeout = 120  # idle keep-alive connections end after this many seconds
    server_version = "nomyo-devserver"
    sys_version = ""
    server: HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.router.count("connections")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        router = self.server.router
        if path == "/pki/public_key":
            self._send(router.public_key())
        elif path == "/devserver/stats":
            self._send(Reply(200, _json(router.stats())))
        elif path == "/":
            info = {"name": "nomyo-devserver", "endpoints": list(_PATHS[1:])}
            self._send(Reply(200, _json(info)))
        elif path in _PATHS:
            self._send(error(405, "method not allowed"))
        else:
            self._send(error(404, "not found"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in _PATHS:
            self._discard_body_or_close()
            self._send(error(404, "not found"))
            return
        if path != "/v1/chat/secure_completion":
            self._discard_body_or_close()
            self._send(error(405, "method not allowed"))
            return
        body = self._read_body()
        if isinstance(body, Reply):
            self._send(body)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            reply = self.server.router.secure_completion(headers, body)
        except Exception:  # a bug here must not kill the connection thread silently
            traceback.print_exc(file=sys.stderr)
            reply = error(500, "internal error in nomyo-devserver (see its log)")
        self._send(reply)

    def _not_allowed(self) -> None:
        """PUT, PATCH, DELETE, OPTIONS: JSON 405 (404 off our paths), not http.server's HTML 501."""
        path = self.path.split("?", 1)[0]
        self._discard_body_or_close()
        self._send(error(405, "method not allowed") if path in _PATHS else error(404, "not found"))

    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

    def _read_body(self) -> bytes | Reply:
        if self.headers.get("Transfer-Encoding"):
            return error(411, "send the body with a Content-Length", close=True)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return error(411, "Content-Length is required", close=True)
        try:
            length = int(raw)
        except ValueError:
            return error(400, "Content-Length is not a number", close=True)
        limit = self.server.max_body
        if length < 0:
            return error(400, "Content-Length is negative", close=True)
        if length > limit:
            self.server.router.count("status_413")
            if length <= max(4 * limit, _DRAIN_MAX):
                self._drain(length)  # else the client may see a reset instead of the 413
            return error(
                413, f"the body has {length} bytes, over this router's {limit}", close=True
            )
        return self.rfile.read(length)

    def _drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)

    def _discard_body_or_close(self) -> None:
        body = self._read_body()
        if isinstance(body, Reply):
            self.close_connection = True

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            super().log_message(format, *args)


def _json(value: object) -> bytes:
    encoded: bytes = msgspec.json.encode(value)
    return encoded


class HTTPServer(ThreadingHTTPServer):
    """The listening socket; ``finish_request`` runs in each connection's own thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        router: Router,
        *,
        tls: ssl.SSLContext | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        log: bool = False,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.router = router
        self.tls = tls
        self.max_body = max_body
        self.log = log
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        if self.tls is not None:
            try:
                sock.settimeout(10)
                sock = self.tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError):
                with contextlib.suppress(OSError):
                    request.close()
                return
        with self._live_lock:
            self._live.add(sock)
        try:
            super().finish_request(sock, client_address)
        finally:
            with self._live_lock:
                self._live.discard(sock)
            if sock is not request:
                with contextlib.suppress(OSError):
                    sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanishes mid-request is normal for a test router; anything else is logged.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._live_lock:
            live = list(self._live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
