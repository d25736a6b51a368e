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

This module parses the command line and turns errors into exit codes; the commands are in
``_cli_daemon``, ``_cli_identity`` and ``_cli_status``, what they share in ``_cli_common``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from nomyo_agent import __version__
from nomyo_agent import protocol as p
from nomyo_agent._cli_common import EXIT_CANCELLED, EXIT_NO_AGENT, EXIT_REFUSED, EXIT_USAGE
from nomyo_agent._cli_daemon import (
    cmd_install_service,
    cmd_serve,
    cmd_start,
    cmd_stop,
    cmd_uninstall_service,
)
from nomyo_agent._cli_identity import cmd_import, cmd_keygen, cmd_lock, cmd_public_key, cmd_unlock
from nomyo_agent._cli_status import cmd_apps, cmd_pins, cmd_status
from nomyo_agent.errors import (
    AgentError,
    AgentUnavailableError,
    PinentryCancelledError,
    UsageError,
)
from nomyo_agent.paths import socket_path, socket_path_problem

__all__ = ["main"]

EPILOG = """\
exit codes: 0 done, 1 the agent refused (the message says why), 2 bad command line,
3 no agent at the socket, 4 passphrase prompt cancelled

The socket is $NOMYO_AGENT_SOCK, else $XDG_RUNTIME_DIR/nomyo-agent/agent.sock.
"""

MIN_BITS = (
    2048  # the agent's own floor (_keys.MIN_BITS), checked here to exit 2 without a round trip
)


def _seconds(text: str) -> float:
    # The file's rules (finite, 0 to a year): `--idle-timeout nan` would turn the lock off.
    from nomyo_agent._config import parse_seconds  # noqa: PLC0415 - tomllib and all: serve only

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
