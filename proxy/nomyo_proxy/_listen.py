"""Where ``nomyo-proxy serve`` listens: the socket it binds, or the one systemd or launchd passed.

Rules of this module:

- A socket passed by systemd or launchd (named ``proxy``) is used as it is; one that listens
  beyond loopback needs ``--allow-remote``.
- A listen address that is not loopback is refused unless ``--allow-remote`` is given, and then
  only with ``--tls-cert``/``--tls-key``: tokens must never cross a network in clear.
- A Unix socket is 0600 from its creation, in a folder that follows the agent's socket-folder
  rules; a stale socket is replaced, a live one is not.
- ``bind`` returns the listening socket with the host name to accept in ``Host`` and the base
  URL the CLI prints; it reads the arguments, it does not parse them.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from nomyo_proxy._errors import ConfigError

__all__ = ["bind", "is_loopback", "split_listen"]


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


def bind(args: argparse.Namespace) -> tuple[socket.socket, str, str]:
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
