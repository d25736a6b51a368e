"""``DevServer``: a local NOMYO router in a background thread, for development, demos and tests.

Rules of this module:

- Construction does the slow parts (loading or generating the RSA key, loading the TLS
  certificate) and fails early; ``start`` only binds and starts the thread, so once it returns
  the socket accepts connections.
- Plain HTTP unless a TLS certificate and key are given; the ``url`` says which.
"""

from __future__ import annotations

import os
import ssl
import threading
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_devserver._keystore import RouterKeys, generate, load_or_create
from nomyo_devserver._router import Router
from nomyo_devserver._server import DEFAULT_MAX_BODY, HTTPServer
from nomyo_devserver._upstream import Upstream

__all__ = ["DevServer"]


class DevServer:
    """A local router speaking the secure-completion protocol (PROTOCOL.md).

    ``port=0`` picks a free port. The key is ``key``, else the one kept in ``key_file``
    (generated there, mode 0600, if missing), else an ephemeral RSA key of ``key_bits`` bits.
    ``api_key`` makes ``Authorization: Bearer <api_key>`` mandatory. ``tls_cert``/``tls_key``
    (PEM files) serve HTTPS. ``upstream`` forwards requests to an OpenAI-compatible server
    instead of the echo model. Bodies over ``max_body`` bytes get a 413.

    Example::

        with DevServer() as server:
            client = SecureChatCompletion(base_url=server.url, allow_http=True)
            ...
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key: rsa.RSAPrivateKey | None = None,
        key_file: str | os.PathLike[str] | None = None,
        key_bits: int = 4096,
        api_key: str | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        upstream: str | None = None,
        upstream_api_key: str | None = None,
        upstream_model: str | None = None,
        upstream_timeout: float = 300.0,
        max_body: int = DEFAULT_MAX_BODY,
        log: bool = False,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        self.host = host
        self.port = port
        self.key_file = key_file
        if key is None:
            key = load_or_create(key_file, key_bits) if key_file is not None else generate(key_bits)
        self.keys = RouterKeys(key)
        self.api_key = api_key
        self._tls: ssl.SSLContext | None = None
        if tls_cert is not None and tls_key is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls.load_cert_chain(os.fspath(tls_cert), os.fspath(tls_key))
        self._upstream = (
            Upstream(
                upstream, api_key=upstream_api_key, model=upstream_model, timeout=upstream_timeout
            )
            if upstream
            else None
        )
        self.router = Router(self.keys, api_key=api_key, upstream=self._upstream)
        self.max_body = max_body
        self.log = log
        self._http: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> DevServer:
        """Bind and serve in a background thread; returns at once, already accepting."""
        if self._http is not None:
            raise RuntimeError("the server is already started")
        self._http = HTTPServer(
            (self.host, self.port), self.router, tls=self._tls, max_body=self.max_body, log=self.log
        )
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"nomyo-devserver:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close kept-alive connections, release the port; idempotent."""
        http, self._http = self._http, None
        if http is None:
            return
        http.shutdown()
        http.close_connections()
        http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._upstream is not None:
            self._upstream.close()

    def __enter__(self) -> DevServer:
        return self.start() if self._http is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- facts -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:43121``."""
        scheme = "https" if self._tls is not None else "http"
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def public_key_pem(self) -> str:
        """The router key as ``/pki/public_key`` serves it (SubjectPublicKeyInfo PEM)."""
        return self.keys.current.pem

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the router key's DER, as ``nomyo-agent`` pins show it."""
        return self.keys.current.fingerprint

    def rotate_key(self, key: rsa.RSAPrivateKey | None = None) -> str:
        """Serve ``key`` (else a fresh one of the same size) from now on; returns its PEM.

        The key file, if any, keeps the old key: a restart goes back to it.
        """
        return self.keys.rotate(key).pem

    def stats(self) -> dict[str, Any]:
        """Counters since start (``connections``, ``key_fetches``, ``completions``, ...)."""
        return dict(self.router.stats())
