"""``nomyo-devserver``: run a local NOMYO router in the foreground.

Rules of this module:

- The first line on stdout is ``NOMYO_BASE_URL=<url>``, printed only once the socket accepts
  connections, so scripts and test fixtures wait for that line; the second is
  ``NOMYO_ROUTER_FINGERPRINT=<sha256>``. Each key change prints a new fingerprint line.
- SIGTERM and SIGINT stop it cleanly (exit 0). SIGHUP changes the router key: to the key in
  ``--key-file`` if that file now holds a different one, else to a fresh key of the same size.
- Secrets do not belong on a command line (other users see it in ``ps``): the API keys can
  come from ``NOMYO_DEVSERVER_API_KEY`` and ``NOMYO_UPSTREAM_API_KEY`` instead.
- Errors are one lower-case line plus a ``hint:`` line, exit status 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from nomyo_agent import __version__
from nomyo_devserver import _hooks
from nomyo_devserver._devserver import DevServer
from nomyo_devserver._keystore import KeyFileError, load_or_create
from nomyo_devserver._server import DEFAULT_MAX_BODY

__all__ = ["main"]

DEFAULT_PORT = 12434


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nomyo-devserver",
        description="A local NOMYO router for development and tests: the secure-completion "
        "protocol with a deterministic echo model, or forwarding to an OpenAI-compatible "
        "server (llama.cpp, Ollama, vLLM).",
        epilog="Test hooks (model names under devserver/): see --help-hooks.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port, 0 for any free one (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        help="keep the router key in this PEM file (0600, generated if missing)",
    )
    p.add_argument(
        "--key-bits", type=int, default=4096, help="size of a generated router key (default 4096)"
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("NOMYO_DEVSERVER_API_KEY"),
        help="require `Authorization: Bearer KEY` (env NOMYO_DEVSERVER_API_KEY)",
    )
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--tls-key", type=Path, help="the certificate's PEM private key")
    p.add_argument(
        "--upstream",
        metavar="URL",
        help="forward requests to this OpenAI-compatible server, e.g. http://localhost:11434",
    )
    p.add_argument(
        "--upstream-api-key",
        default=os.environ.get("NOMYO_UPSTREAM_API_KEY"),
        help="bearer key for the upstream (env NOMYO_UPSTREAM_API_KEY)",
    )
    p.add_argument("--upstream-model", help="send this model name upstream instead of the client's")
    p.add_argument(
        "--upstream-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the upstream (default 300)",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=DEFAULT_MAX_BODY,
        help=f"largest request body in bytes, else 413 (default {DEFAULT_MAX_BODY})",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not log requests to stderr")
    p.add_argument("--help-hooks", action="store_true", help="list the test hooks and exit")
    p.add_argument("--version", action="version", version=f"nomyo-devserver {__version__}")
    return p


def _fail(message: str, hint: str) -> int:
    print(f"nomyo-devserver: error: {message}\nhint: {hint}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.help_hooks:
        doc = _hooks.__doc__ or ""
        print(doc[doc.index("====") :].rstrip())
        return 0
    if (args.tls_cert is None) != (args.tls_key is None):
        return _fail("--tls-cert and --tls-key go together", "give both, or neither for plain HTTP")
    try:
        server = DevServer(
            args.host,
            args.port,
            key_file=args.key_file,
            key_bits=args.key_bits,
            api_key=args.api_key or None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            upstream=args.upstream,
            upstream_api_key=args.upstream_api_key or None,
            upstream_model=args.upstream_model,
            upstream_timeout=args.upstream_timeout,
            max_body=args.max_body,
            log=not args.quiet,
        )
    except KeyFileError as exc:
        return _fail(str(exc), exc.hint)
    except (OSError, ValueError) as exc:
        return _fail(
            f"cannot set up the server: {exc}", "check the key, certificate and option values"
        )
    try:
        server.start()
    except OSError as exc:
        return _fail(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            "pick another --port, or --port 0 for a free one",
        )
    return _serve(server, args.key_file)


def _serve(server: DevServer, key_file: Path | None) -> int:
    wake = threading.Event()
    pending: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)
        wake.set()

    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    print(f"NOMYO_BASE_URL={server.url}", flush=True)
    print(f"NOMYO_ROUTER_FINGERPRINT={server.fingerprint}", flush=True)
    print(f"nomyo-devserver: serving {server.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while True:
            if not wake.wait(1.0):
                continue
            wake.clear()
            while pending:
                signum = pending.pop(0)
                if signum == getattr(signal, "SIGHUP", None):
                    _rotate(server, key_file)
                    print(f"NOMYO_ROUTER_FINGERPRINT={server.fingerprint}", flush=True)
                else:
                    return 0
    finally:
        server.stop()
        print("nomyo-devserver: stopped", file=sys.stderr, flush=True)


def _rotate(server: DevServer, key_file: Path | None) -> None:
    if key_file is not None:
        try:
            key = load_or_create(key_file, server.keys.current.private.key_size)
        except KeyFileError as exc:
            print(f"nomyo-devserver: key file not used: {exc}", file=sys.stderr, flush=True)
        else:
            if (
                key.public_key().public_numbers()
                != server.keys.current.private.public_key().public_numbers()
            ):
                server.rotate_key(key)
                return
    server.rotate_key()
