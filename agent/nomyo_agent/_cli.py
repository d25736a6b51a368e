"""``nomyo-agent``: the daemon and the commands that talk to it.

Exit codes (also in ``nomyo-agent --help``):

    0  done
    1  the agent refused (locked, wrong passphrase, pin mismatch, ...): the line says why
    2  the command line is wrong
    3  no agent answers at the socket (start one: ``eval "$(nomyo-agent start)"``)
    4  the user cancelled the passphrase prompt

Errors are one lower-case line on stderr, then a ``hint:`` line saying what to do. Passphrases
come from pinentry, run by the agent on this terminal or display; ``--passphrase-stdin`` reads one
line from standard input instead, for scripts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from nomyo_agent import __version__
from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from nomyo_agent.errors import (
    AgentError,
    AgentUnavailableError,
    PinentryCancelledError,
    UsageError,
)
from nomyo_agent.paths import socket_path, socket_path_problem

__all__ = ["main"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_AGENT, EXIT_CANCELLED = 0, 1, 2, 3, 4

EPILOG = """\
exit codes: 0 done, 1 the agent refused (the message says why), 2 bad command line,
3 no agent at the socket, 4 passphrase prompt cancelled

The socket is $NOMYO_AGENT_SOCK, else $XDG_RUNTIME_DIR/nomyo-agent/agent.sock.
"""

MIN_BITS = (
    2048  # the agent's own floor (_keys.MIN_BITS), checked here to exit 2 without a round trip
)


# Slow operations (key generation, a person typing a passphrase) must not hit a short timeout.
INTERACTIVE_TIMEOUT = 600.0


def _connect(args: argparse.Namespace, timeout: float | None = 30.0) -> AgentConnection:
    return AgentConnection.open(args.socket, timeout=timeout)


def _call(
    args: argparse.Namespace,
    request: p.Request,
    expect: type[p.Response],
    timeout: float | None = 30.0,
) -> p.Response:
    with _connect(args, timeout) as conn:
        return conn.call(request, expect)


def _read_passphrase() -> bytes:
    """One line from stdin, without its line ending."""
    data = sys.stdin.buffer.readline()
    return data.rstrip(b"\r\n") if data.endswith(b"\n") else data


def _refuse_empty_passphrase(args: argparse.Namespace) -> None:
    """Empty stdin for a passphrase-protected identity is a usage error, not a guess.

    The agent would count it as a failed unlock (and grow the delay before the next one). An
    identity with no passphrase unlocks with empty stdin, as scripts do.
    """
    st = _call(args, p.Status(), p.StatusReply)
    assert isinstance(st, p.StatusReply)
    if st.passphrase_protected:
        raise UsageError(
            "--passphrase-stdin read no passphrase (standard input was empty)",
            hint="pipe it in, e.g. `printf '%s\\n' \"$PASSPHRASE\" | nomyo-agent unlock "
            "--passphrase-stdin`, or leave the option out and let pinentry ask",
        )


def _where() -> p.PinEntry:
    from nomyo_agent._pinentry import pinentry_here  # noqa: PLC0415 - only when prompting

    return pinentry_here()


def _say(text: str) -> None:
    print(text, file=sys.stderr)


# --- commands ------------------------------------------------------------------------------------


def _set_title(path: str | None) -> None:
    """``nomyo-agent serve --socket PATH`` in ps, ``nomyo-agent`` as the name pgrep matches."""
    # SPT_NOENV: write the title over argv only, never over the environment block, so that
    # /proc/PID/environ stays true (the title is cut to argv's length instead). Read once, at
    # the first call; not left for the children (pinentry, the key worker) to inherit.
    os.environ["SPT_NOENV"] = "1"
    try:
        import setproctitle  # noqa: PLC0415 - the daemon only

        setproctitle.setproctitle(f"nomyo-agent serve --socket {socket_path(path)}")
    finally:
        del os.environ["SPT_NOENV"]
    setproctitle.setthreadtitle("nomyo-agent")  # /proc/PID/comm: `pgrep -x nomyo-agent`


def cmd_serve(args: argparse.Namespace) -> int:
    from nomyo_agent import _daemon  # noqa: PLC0415 - imports cryptography; only the daemon needs it
    from nomyo_agent._config import Config, load_config  # noqa: PLC0415

    path = socket_path(args.socket)
    _set_title(args.socket)
    if args.daemon:
        path = os.path.abspath(path)  # the daemon runs in /
        _daemon.daemonize()
    import logging  # noqa: PLC0415

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="nomyo-agent[%(process)d]: %(levelname)s: %(message)s",
    )

    def configure() -> Config:
        # The file, then the flags: the flags still win when SIGHUP re-reads the file.
        return load_config().replace(
            idle_timeout=args.idle_timeout,
            max_lifetime=args.max_lifetime,
            pin_policy=args.pin_policy,
            pinentry=args.pinentry,
            keystore=args.keystore,
        )

    return _daemon.serve(
        configure(),
        path,
        ready_fd=args.ready_fd,
        autostarted=args.autostarted,
        reload=configure,
    )


def cmd_start(args: argparse.Namespace) -> int:
    from nomyo_agent._launch import start_background  # noqa: PLC0415

    extra: list[str] = []
    for flag, value in (
        ("--idle-timeout", args.idle_timeout),
        ("--max-lifetime", args.max_lifetime),
        ("--pinentry", args.pinentry),
        ("--keystore", args.keystore),
    ):
        if value is not None:
            extra += [flag, str(value)]
    path = socket_path(args.socket)
    pid, started = start_background(path, extra_args=extra)
    quoted = shlex.quote(path)
    if args.csh:
        print(f"setenv NOMYO_AGENT_SOCK {quoted};")
    else:
        print(f"NOMYO_AGENT_SOCK={quoted}; export NOMYO_AGENT_SOCK;")
    if not args.quiet:
        print(f"echo {'Agent' if started else 'Agent already running,'} pid {pid};")
    return EXIT_OK


def cmd_install_service(args: argparse.Namespace) -> int:
    from nomyo_agent import _service  # noqa: PLC0415

    # Only an explicit --socket: a NOMYO_AGENT_SOCK left in the shell must not be baked in.
    return _service.install(
        print_only=args.print,
        start=not args.no_start,
        socket=args.socket,
        proxy=args.proxy,
        out=sys.stdout,
    )


def cmd_uninstall_service(args: argparse.Namespace) -> int:
    from nomyo_agent import _service  # noqa: PLC0415

    return _service.uninstall(out=sys.stdout)


def cmd_stop(args: argparse.Namespace) -> int:
    try:
        conn = _connect(args)
    except AgentUnavailableError as exc:
        # "start it" is the wrong advice to someone who wants it gone.
        exc.hint = (
            "nothing to stop; if an agent runs elsewhere, name its socket with --socket "
            "or NOMYO_AGENT_SOCK"
        )
        raise
    with conn:
        pid = conn.call(p.Hello(client="nomyo-agent stop"), p.HelloReply).pid
        conn.call(p.Stop(), p.Ok)
    _say(f"stopped the agent (pid {pid})")
    return EXIT_OK


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "off"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def _recent_apps(clients: Sequence[p.ClientInfo]) -> str:
    """``nomyo-chat (3), myapp``: each app once, most recent first, with its process count."""
    counts: dict[str, int] = {}
    for client in clients:
        counts[client.exe] = counts.get(client.exe, 0) + 1
    return ", ".join(f"{exe} ({n})" if n > 1 else exe for exe, n in counts.items()) or "none"


def _status_text(st: p.StatusReply) -> str:
    short = p.short_fingerprint(st.fingerprint) if st.fingerprint else ""
    state = st.state.value
    if st.state is p.State.UNLOCKED:
        state += (
            f" (idle lock in {_duration(st.idle_left)},"
            f" lifetime lock in {_duration(st.lifetime_left)})"
        )
    if st.state is p.State.LOCKED and st.locked_by:
        state += f" (by {st.locked_by.replace('_', ' ')})"
    lines = [f"state:        {state}"]
    if st.fingerprint:
        protected = "passphrase-protected" if st.passphrase_protected else "no passphrase"
        lines += [
            f"identity:     RSA-{st.bits} {short} ({protected})",
            f"fingerprint:  {st.fingerprint}",
        ]
    recent = _recent_apps(st.recent_clients)
    h = st.hardening
    yes = {True: "yes", False: "NO"}
    c = st.counters
    lines += [
        f"keyring:      {st.keyring_backend}",
        f"router pins:  {st.pin_policy}",
        f"timeouts:     idle {_duration(st.idle_timeout or None)},"
        f" lifetime {_duration(st.max_lifetime or None)}",
        f"agent:        pid {st.pid}, version {st.agent_version}, protocol {st.protocol},"
        f" up {_duration(st.uptime)}",
        f"socket:       {st.socket}",
        *(f"{'session:' if i == 0 else '':14}{line}" for i, line in enumerate(st.session)),
        f"served:       {st.served_since_unlock} requests since unlock; recent apps: {recent}",
        f"hardening:    not dumpable {yes[h.not_dumpable]},"
        f" no core dumps {yes[h.core_dumps_disabled]}, "
        f"ptrace denied {yes[h.ptrace_denied]}, key memory locked {yes[h.key_memory_locked]}, "
        f"process memory locked {yes[h.process_memory_locked]}",
        *(f"              {d}" for d in h.details),
        f"counters:     {c.connections} connections, {c.requests} requests, {c.seals} seals, "
        f"{c.opens} opens, {c.errors} errors, {c.rejected_peers} rejected peers, "
        f"{c.failed_unlocks} failed unlocks",
        f"limits:       {c.open_connections} connections open, {c.evicted_connections} closed "
        f"to make room, {c.refused_connections} refused; {c.buffered_bytes // 1024} KiB "
        f"buffered, {c.waiting_for_memory} waiting for memory",
    ]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    st = _call(args, p.Status(), p.StatusReply)
    assert isinstance(st, p.StatusReply)
    if args.json:
        data = msgspec.to_builtins(st)
        data.pop("op", None)
        print(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())
    else:
        print(_status_text(st))
    return EXIT_OK


def _identity_done(reply: p.Response, verb: str) -> int:
    assert isinstance(reply, p.IdentityReply)
    _say(f"{verb} RSA-{reply.bits} identity {reply.fingerprint}")
    if not reply.passphrase_protected:
        _say(
            "warning: no passphrase: the OS keyring's own protection is all that guards this key "
            "(anyone who can read your unlocked keyring can use it)"
        )
    return EXIT_OK


def _new_passphrase(args: argparse.Namespace) -> tuple[bytes | None, p.PinEntry | None]:
    if args.no_passphrase:
        return b"", None
    if args.passphrase_stdin:
        return _read_passphrase(), None
    return None, _where()


def cmd_keygen(args: argparse.Namespace) -> int:
    passphrase, where = _new_passphrase(args)
    reply = _call(
        args,
        p.Generate(bits=args.bits, passphrase=passphrase, pinentry=where, force=args.force),
        p.IdentityReply,
        timeout=INTERACTIVE_TIMEOUT,
    )
    return _identity_done(reply, "generated")


def cmd_import(args: argparse.Namespace) -> int:
    try:
        pem = Path(args.path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.path}: {exc.strerror}", hint="check the path") from exc
    file_password = _read_passphrase() if args.passphrase_stdin else None
    request = p.Import(
        pem=pem,
        file_password=file_password,
        passphrase=b"" if args.no_passphrase else None,
        pinentry=None if args.passphrase_stdin else _where(),
        force=args.force,
    )
    reply = _call(args, request, p.IdentityReply, timeout=INTERACTIVE_TIMEOUT)
    return _identity_done(reply, "imported")


def cmd_unlock(args: argparse.Namespace) -> int:
    if args.passphrase_stdin:
        passphrase = _read_passphrase()
        if not passphrase:
            _refuse_empty_passphrase(args)
        request = p.Unlock(passphrase=passphrase)
    else:
        request = p.Unlock(pinentry=_where())
    _call(args, request, p.Ok, timeout=INTERACTIVE_TIMEOUT)
    _say("unlocked")
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
    _call(args, p.Lock(), p.Ok)
    _say("locked")
    return EXIT_OK


def cmd_public_key(args: argparse.Namespace) -> int:
    reply = _call(args, p.PublicKey(), p.IdentityReply)
    assert isinstance(reply, p.IdentityReply)
    print(
        reply.fingerprint if args.fingerprint else reply.public_key_pem,
        end="" if not args.fingerprint else "\n",
    )
    return EXIT_OK


def cmd_pins(args: argparse.Namespace) -> int:
    if args.pins_cmd == "accept":
        pem = Path(args.key_file).read_text() if args.key_file else None
        # A malformed ORIGIN is refused by the agent with the origins module's own hint.
        reply = _call(args, p.PinAccept(origin=args.origin, router_key_pem=pem), p.Accepted)
        assert isinstance(reply, p.Accepted)
        _say(f"pinned {reply.origin} to {reply.fingerprint}")
    elif args.pins_cmd == "forget":
        _call(args, p.PinForget(origin=args.origin), p.Ok)
        _say(f"forgot the pin of {args.origin}")
    else:
        pins = _call(args, p.PinsList(), p.PinsReply)
        assert isinstance(pins, p.PinsReply)
        if args.json:
            print(msgspec.json.encode(pins.pins).decode())
        elif not pins.pins:
            _say(f"no routers pinned (policy: {pins.policy})")
        for pin in pins.pins:
            pending = (
                f"  CHANGED KEY OFFERED: {pin.pending_fingerprint}"
                if pin.pending_fingerprint
                else ""
            )
            print(f"{pin.origin}  {pin.fingerprint}{pending}")
    return EXIT_OK


def cmd_apps(args: argparse.Namespace) -> int:
    if args.apps_cmd == "forget":
        _call(args, p.AppForget(app=args.app), p.Ok)
        _say(f"forgot {args.app}: its next use asks again")
        return EXIT_OK
    reply = _call(args, p.Apps(), p.AppsReply)
    assert isinstance(reply, p.AppsReply)
    if args.json:
        print(msgspec.json.encode(reply).decode())
        return EXIT_OK
    if not reply.apps:
        _say(f"no apps since unlock (confirm: {reply.confirm})")
    for app in reply.apps:
        print(f"{app.decision:10} {app.uses:5} uses  {app.app}")
    return EXIT_OK


# --- parser ---------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    # The file's rules (finite, 0 to a year): `--idle-timeout nan` would turn the lock off.
    from nomyo_agent._config import parse_seconds  # noqa: PLC0415 - platformdirs, serve only

    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--idle-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="lock after this long unused (0 = off; default 1800)",
    )
    parser.add_argument(
        "--max-lifetime",
        type=_seconds,
        metavar="SECONDS",
        help="lock this long after unlock (0 = off; default 43200)",
    )
    parser.add_argument(
        "--pinentry", metavar="PROGRAM", help="the pinentry program (default: pinentry)"
    )
    parser.add_argument(
        "--keystore",
        choices=("keyring", "file"),
        help="where the private key lives: the OS keyring (default), or for headless machines "
        "a passphrase-encrypted file in the state folder",
    )


def _passphrase_options(parser: argparse.ArgumentParser, new: bool, exclusive: bool = True) -> None:
    group = parser.add_mutually_exclusive_group() if exclusive else parser
    group.add_argument(
        "--passphrase-stdin",
        action="store_true",
        help="read the passphrase from one line of stdin instead of pinentry",
    )
    if new:
        group.add_argument(
            "--no-passphrase",
            action="store_true",
            help="store the key with no passphrase (the keyring's protection only)",
        )


def _bits(text: str) -> int:
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bits: {text!r}") from None
    if bits < MIN_BITS:
        raise argparse.ArgumentTypeError(
            f"{bits} bits is too small: routers refuse keys under {MIN_BITS} bits"
            " (4096, the default, is what the nomyo client uses)"
        )
    return bits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomyo-agent",
        description="Holds your nomyo identity and seals and opens messages for local apps.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nomyo-agent {__version__}")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the agent's socket (default: $NOMYO_AGENT_SOCK, else the per-user default)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], argparse.ArgumentParser]] = {}

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        # `nomyo-agent serve --socket X` and `nomyo-agent --socket X serve` both work; SUPPRESS
        # keeps the subcommand's absent option from overwriting the global one.
        sp.add_argument(
            "--socket", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        commands[name] = (func, sp)
        return sp

    sp = add("serve", cmd_serve, "run the agent in the foreground")
    _serve_options(sp)
    sp.add_argument(
        "--pin-policy",
        choices=("tofu", "off"),
        help="pin router keys on first use (default) or not at all",
    )
    sp.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    sp.add_argument("--daemon", action="store_true", help=argparse.SUPPRESS)
    sp.add_argument("--autostarted", action="store_true", help=argparse.SUPPRESS)
    sp.add_argument("-v", "--verbose", action="store_true")

    sp = add(
        "start",
        cmd_start,
        "start the agent in the background unless one runs; print the shell line to find it",
    )
    _serve_options(sp)
    sp.add_argument(
        "-c", "--csh", action="store_true", help="print a csh line instead of a Bourne shell one"
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="print only the environment line")

    add("stop", cmd_stop, "stop the agent (the key is dropped)")
    sp = add(
        "install-service",
        cmd_install_service,
        "let systemd (Linux) or launchd (macOS) start the agent on demand; --socket sets its path",
    )
    sp.add_argument("--print", action="store_true", help="show the files; write nothing")
    sp.add_argument("--no-start", action="store_true", help="write the files; start nothing")
    sp.add_argument(
        "--proxy",
        action="store_true",
        help="also nomyo-proxy, started on the first connection to 127.0.0.1:12480",
    )
    add("uninstall-service", cmd_uninstall_service, "undo install-service")
    sp = add("status", cmd_status, "show the state, identity, timers, hardening and counters")
    sp.add_argument("--json", action="store_true")

    sp = add("keygen", cmd_keygen, "generate a new identity in the OS keyring")
    sp.add_argument(
        "--bits", type=_bits, default=4096, help="RSA key size (default 4096, minimum 2048)"
    )
    sp.add_argument("--force", action="store_true", help="replace an existing identity")
    _passphrase_options(sp, new=True)

    sp = add(
        "import",
        cmd_import,
        "import a PEM private key, e.g. the public client's client_keys/private_key.pem",
    )
    sp.add_argument("path", help="the PEM file (PKCS#1 or PKCS#8, encrypted or not)")
    sp.add_argument("--force", action="store_true", help="replace an existing identity")
    # import: stdin gives the *file's* password, --no-passphrase says how to *store* it: both fit
    _passphrase_options(sp, new=True, exclusive=False)

    sp = add("unlock", cmd_unlock, "unlock the identity (pinentry asks for the passphrase)")
    _passphrase_options(sp, new=False)
    add("lock", cmd_lock, "drop the key from memory now")
    sp = add("public-key", cmd_public_key, "print the public key (PEM)")
    sp.add_argument("--fingerprint", action="store_true", help="print only the SHA-256 fingerprint")

    sp = add("pins", cmd_pins, "list, accept or forget router key pins")
    pins = sp.add_subparsers(dest="pins_cmd", metavar="ACTION")
    lp = pins.add_parser("list", help="list pinned routers")
    lp.add_argument("--json", action="store_true")
    ap = pins.add_parser("accept", help="accept the changed key offered by ORIGIN")
    ap.add_argument("origin")
    ap.add_argument("--key-file", help="pin this PEM instead of the key last offered")
    fp = pins.add_parser(
        "forget", help="forget ORIGIN's pin (the next key is trusted on first use)"
    )
    fp.add_argument("origin")
    sp.set_defaults(json=False)

    sp = add("apps", cmd_apps, "list the apps seen since unlock and whether they were allowed")
    sp.add_argument("--json", action="store_true")
    apps = sp.add_subparsers(dest="apps_cmd", metavar="ACTION")
    fa = apps.add_parser("forget", help="forget the decision for APP (its next use asks again)")
    fa.add_argument("app", help="as `nomyo-agent apps` prints it")
    return parser


def _fail(message: str, hint: str) -> None:
    print(f"nomyo-agent: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


# The service commands take --socket as the unit's listen path (systemd's %t form allowed).
_NO_SOCKET_CHECK = ("install-service", "uninstall-service")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command not in _NO_SOCKET_CHECK:
            problem = socket_path_problem(socket_path(args.socket))
            if problem is not None:
                raise UsageError(*problem)
        return int(args.func(args))
    except UsageError as exc:
        _fail(exc.message, exc.hint)
        return EXIT_USAGE
    except AgentUnavailableError as exc:
        _fail(exc.message, exc.hint)
        return EXIT_NO_AGENT
    except PinentryCancelledError:
        _fail("cancelled", "")
        return EXIT_CANCELLED
    except AgentError as exc:
        _fail(exc.message, exc.hint)
        return EXIT_REFUSED
    except p.FrameTooLarge as exc:  # refused here, before sending: the agent would close on it
        _fail(f"the request is too large for the agent: {exc}", "check the file you gave")
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
