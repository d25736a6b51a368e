"""``nomyo-proxy``: serve the local OpenAI-compatible endpoint, and manage its tokens.

Rules of this module:

- ``serve`` binds the socket itself (or takes the one systemd passed, named ``proxy``), then
  prints ``NOMYO_PROXY_URL=<base url>`` on stdout: from that line on, connections are accepted.
- Where it listens, and which addresses it refuses, is ``_listen``'s; where the router's API key
  comes from (never from an app) is ``_apikey``'s.
- ``token create NAME`` prints the token alone on one line of stdout, and nothing else there.
- Errors are one lower-case line plus a ``hint:`` line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nomyo_client import APIError
from nomyo_client import _wire as wire
from nomyo_proxy._apikey import KEYRING_SERVICE, api_key_from
from nomyo_proxy._app import ProxyApp, Settings
from nomyo_proxy._errors import ConfigError, ProxyError
from nomyo_proxy._listen import bind
from nomyo_proxy._protocol import HTTP_CHOICES, http_protocol
from nomyo_proxy._tokens import TokenStore, default_token_path

__all__ = ["DEFAULT_PORT", "main"]

DEFAULT_PORT = 12480
DEFAULT_ROUTER = "https://api.nomyo.ai"
LOOP_CHOICES = ("auto", "asyncio", "uvloop")

log = logging.getLogger("nomyo_proxy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomyo-proxy",
        description="A local OpenAI-compatible endpoint whose requests the nomyo agent encrypts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve /v1/chat/completions and /v1/models")
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"TCP address (default 127.0.0.1:{DEFAULT_PORT}; port 0 picks a free one)",
    )
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead")
    serve.add_argument(
        "--router",
        metavar="URL",
        default=os.environ.get("NOMYO_BASE_URL") or DEFAULT_ROUTER,
        help=f"the NOMYO router (default $NOMYO_BASE_URL, else {DEFAULT_ROUTER})",
    )
    serve.add_argument("--allow-http", action="store_true", help="allow an http:// router")
    serve.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="also accept requests whose Host header names NAME (repeatable)",
    )  # fmt: skip
    serve.add_argument(
        "--allow-origin", action="append", default=[], metavar="ORIGIN",
        help="accept browser requests from ORIGIN, e.g. http://localhost:3000 (repeatable)",
    )  # fmt: skip
    serve.add_argument(
        "--allow-remote", action="store_true",
        help="allow a non-loopback --listen address (requires --tls-cert and --tls-key)",
    )  # fmt: skip
    serve.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate")
    serve.add_argument("--tls-key", type=Path, help="the certificate's PEM private key")
    serve.add_argument(
        "--model", action="append", default=[], metavar="NAME",
        help="list NAME in /v1/models when the router has no list (repeatable)",
    )  # fmt: skip
    serve.add_argument("--api-key-file", type=Path, help="the router API key, in a 0600 file")
    serve.add_argument(
        "--api-key-keyring", action="store_true",
        help=f"read the router API key from the OS keyring (service {KEYRING_SERVICE}, "
        "user = the router URL)",
    )  # fmt: skip
    serve.add_argument(
        "--request-timeout", type=float, default=30.0, metavar="SECONDS",
        help="a request's head, then its body, must each arrive within this time (default 30)",
    )  # fmt: skip
    serve.add_argument("--agent-socket", help="the agent's socket (default: as every client)")
    serve.add_argument(
        "--http", choices=HTTP_CHOICES, default="auto",
        help="the HTTP parser: httptools (C) where installed, else h11 (pure Python)",
    )  # fmt: skip
    serve.add_argument(
        "--loop", choices=LOOP_CHOICES, default="auto",
        help="the event loop: uvloop where installed, else asyncio's own",
    )  # fmt: skip
    serve.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error"),
        help="info logs one line per request: path, app, status, time (default warning)",
    )  # fmt: skip
    token = sub.add_parser("token", help="per-app tokens (the apps' API keys)")
    tsub = token.add_subparsers(dest="token_command", required=True)
    tsub.add_parser("create", help="make a token; prints it once").add_argument("name")
    tsub.add_parser("list", help="names, created, last used (never the tokens)")
    tsub.add_parser("revoke", help="delete a token").add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "token":
            return _token(args)
        return _serve(args)
    except ProxyError as exc:
        print(f"nomyo-proxy: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# --- tokens ------------------------------------------------------------------------------


def _token(args: argparse.Namespace) -> int:
    store = TokenStore(default_token_path())
    if args.token_command == "create":
        print(store.create(args.name), flush=True)
    elif args.token_command == "revoke":
        store.revoke(args.name)
        print(f"revoked {args.name}", file=sys.stderr)
    else:
        tokens = store.list()
        if not tokens:
            print("no tokens; make one with `nomyo-proxy token create NAME`", file=sys.stderr)
        for name, info in tokens.items():
            used = _when(info.last_used) if info.last_used else "never"
            print(f"{name}\tcreated {_when(info.created)}\tlast used {used}")
    return 0


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


# --- serve -------------------------------------------------------------------------------


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for ``auto`` where it can be imported (not on Windows), else asyncio's."""
    if name == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        if name == "uvloop":
            raise ConfigError(
                "--loop uvloop: uvloop is not installed", hint="pip install uvloop, or --loop auto"
            ) from None
        return None
    return uvloop.new_event_loop


def _in_a_thread(write: Callable[[], None]) -> None:
    """How the serving proxy records a token's use: on a thread, never on its event loop
    (where ``check`` runs, inside a request)."""
    asyncio.get_running_loop().run_in_executor(None, write)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - token commands need none of it

    logging.basicConfig(
        level=args.log_level.upper(), format="nomyo-proxy: %(levelname)s %(message)s"
    )
    try:
        router = wire.check_base_url(args.router, args.allow_http)
    except APIError as exc:  # plain http:// without --allow-http
        raise ConfigError(exc.message, hint=exc.hint or "") from exc
    api_key = api_key_from(args, router)
    sock, host, url = bind(args)
    tokens = TokenStore(default_token_path(), background=_in_a_thread)
    tokens.list()  # an unreadable token file is an error now, not at the first request
    settings = Settings(
        router_url=router,
        api_key=api_key,
        allow_http=args.allow_http,
        listen_host=host,
        allow_hosts=frozenset(h.lower().rstrip(".") for h in args.allow_host),
        allow_origins=frozenset(args.allow_origin),
        models=tuple(args.model),
        agent_socket=args.agent_socket,
        request_timeout=args.request_timeout,
    )
    try:
        app = ProxyApp(settings, tokens)
    except Exception as exc:
        raise ConfigError(str(exc), hint=getattr(exc, "hint", "") or "") from exc
    config = uvicorn.Config(
        app,
        http=http_protocol(args.http, args.request_timeout),
        lifespan="on",
        access_log=False,
        # No X-Forwarded-* rewriting: nothing trusted stands in front of the proxy, and the
        # middleware would only cost time on every request.
        proxy_headers=False,
        log_level=args.log_level.lower(),
        timeout_keep_alive=30,
        ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
        ssl_keyfile=str(args.tls_key) if args.tls_key else None,
    )
    server = uvicorn.Server(config)
    print(f"NOMYO_PROXY_URL={url}", flush=True)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(server.serve(sockets=[sock]))
    return 0
