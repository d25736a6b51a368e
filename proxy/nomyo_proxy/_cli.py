"""``nomyo-proxy``: serve the local OpenAI-compatible endpoint, and manage its tokens.

Rules of this module:

- ``serve`` binds the socket itself (or takes the one systemd passed, named ``proxy``), then
  prints ``NOMYO_PROXY_URL=<base url>`` on stdout: from that line on, connections are accepted.
- A listen address that is not loopback is refused unless ``--allow-remote`` is given, and then
  only with ``--tls-cert``/``--tls-key``: tokens must never cross a network in clear.
- The router's API key comes from ``NOMYO_API_KEY``, a 0600 ``--api-key-file`` or, with
  ``--api-key-keyring``, the OS keyring (read by a short-lived child process, so that this
  process never loads the keyring's cryptography); never from an app.
- ``token create NAME`` prints the token alone on one line of stdout, and nothing else there.
- Errors are one lower-case line plus a ``hint:`` line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nomyo_client import APIError
from nomyo_client import _wire as wire
from nomyo_proxy._app import ProxyApp, Settings
from nomyo_proxy._errors import ConfigError, ProxyError
from nomyo_proxy._protocol import HTTP_CHOICES, http_protocol
from nomyo_proxy._tokens import TokenStore, default_token_path

__all__ = ["DEFAULT_PORT", "main"]

DEFAULT_PORT = 12480
DEFAULT_ROUTER = "https://api.nomyo.ai"
KEYRING_SERVICE = "nomyo-proxy"
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


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"invalid --listen {listen!r}", hint="use HOST:PORT, e.g. 127.0.0.1:12480"
        )
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _api_key(args: argparse.Namespace, router: str) -> str | None:
    from_env = os.environ.get("NOMYO_API_KEY")
    if from_env:
        return from_env.strip()
    if args.api_key_file is not None:
        path: Path = args.api_key_file
        try:
            st = path.stat()
            if st.st_mode & 0o077:
                raise ConfigError(f"{path} is readable by others", hint=f"chmod 600 {path}")
            return path.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if args.api_key_keyring:
        return _keyring_key(router)
    return None


_KEYRING_READ = (
    "import sys, keyring\n"
    "value = keyring.get_password(sys.argv[1], sys.argv[2])\n"
    "sys.exit(3) if value is None else sys.stdout.write(value)\n"
)


def _keyring_key(router: str) -> str:
    # -I: isolated mode, nothing from the working directory or the environment is imported.
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _KEYRING_READ, KEYRING_SERVICE, router],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise ConfigError("the OS keyring did not answer in 30 s") from exc
    if done.returncode == 3:
        raise ConfigError(
            f"the OS keyring has no API key for {router}",
            hint=f"store it: keyring set {KEYRING_SERVICE} {router}",
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ConfigError(f"cannot read the OS keyring: {last}")
    return done.stdout.strip()


def _bind(args: argparse.Namespace) -> tuple[socket.socket, str, str]:
    """The listening socket, the host name to accept in ``Host``, and the base URL to print."""
    from nomyo_agent._systemd import inherited_socket  # noqa: PLC0415

    tls = args.tls_cert is not None or args.tls_key is not None
    scheme = "https" if tls else "http"
    inherited = inherited_socket(name="proxy")
    if inherited is None and sys.platform == "darwin":
        from nomyo_agent import _launchd  # noqa: PLC0415 - macOS only

        inherited = _launchd.inherited_socket("proxy")
    if inherited is not None:
        inherited.setblocking(True)
        if inherited.family == socket.AF_UNIX:
            return inherited, "localhost", f"unix:{inherited.getsockname()}"
        host, port = inherited.getsockname()[:2]
        if not is_loopback(host) and not args.allow_remote:
            raise ConfigError(f"the socket passed by systemd listens on {host}, not loopback")
        return inherited, host, f"{scheme}://{_url_host(host)}:{port}/v1"
    if args.unix:
        return _bind_unix(Path(args.unix)), "localhost", f"unix:{args.unix}"
    host, port = split_listen(args.listen)
    if not is_loopback(host):
        if not args.allow_remote:
            raise ConfigError(
                f"refusing to listen on {host}: not a loopback address",
                hint="apps on this machine reach 127.0.0.1; for other machines add "
                "--allow-remote with --tls-cert and --tls-key",
            )
        if not (args.tls_cert and args.tls_key):
            raise ConfigError(
                "--allow-remote needs --tls-cert and --tls-key",
                hint="tokens must not cross a network in clear",
            )
    try:
        sock = _tcp_listener(host, port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="another nomyo-proxy may be running; pick another port with --listen",
        ) from exc
    bound = sock.getsockname()[1]
    return sock, host, f"{scheme}://{_url_host(host)}:{bound}/v1"


def _tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio turns Nagle off
    # (TCP_NODELAY) only on sockets that say they are TCP. With Nagle on, every answer on a
    # keep-alive connection waited ~40 ms for the client's delayed ACK (measured: 44 ms vs 3 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind_unix(path: Path) -> socket.socket:
    """A Unix socket, 0600 from its creation, in a folder that follows the agent's socket-folder
    rules (``nomyo_agent._sockdir``); a stale socket is replaced, a live one is not."""
    from nomyo_agent import _sockdir  # noqa: PLC0415 - POSIX only
    from nomyo_agent.errors import AgentError  # noqa: PLC0415

    try:
        _sockdir.private_folder(str(path.parent))
        if path.is_socket():
            if _sockdir.socket_answers(str(path)):
                raise ConfigError(
                    f"something already answers at {path}",
                    hint="another nomyo-proxy may be running; pick another --unix path",
                )
            path.unlink()  # refused: whoever bound it is gone
    except AgentError as exc:
        raise ConfigError(f"cannot listen on {path}: {exc.message}", hint=exc.hint) from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # 0600 from its creation, not chmod-ed after bind
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


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


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - token commands need none of it

    logging.basicConfig(
        level=args.log_level.upper(), format="nomyo-proxy: %(levelname)s %(message)s"
    )
    try:
        router = wire.check_base_url(args.router, args.allow_http)
    except APIError as exc:  # plain http:// without --allow-http
        raise ConfigError(exc.message, hint=exc.hint or "") from exc
    api_key = _api_key(args, router)
    sock, host, url = _bind(args)
    tokens = TokenStore(default_token_path())
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
