"""``nomyo-agent keygen``, ``import``, ``unlock``, ``lock``, ``public-key``: the identity.

Passphrases come from pinentry, run by the agent on this terminal or display;
``--passphrase-stdin`` reads one line from standard input instead, for scripts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nomyo_agent import protocol as p
from nomyo_agent._cli_common import EXIT_OK, INTERACTIVE_TIMEOUT, call, say
from nomyo_agent.errors import UsageError

__all__ = ["cmd_import", "cmd_keygen", "cmd_lock", "cmd_public_key", "cmd_unlock"]


def _read_passphrase() -> bytes:
    """One line from stdin, without its line ending."""
    data = sys.stdin.buffer.readline()
    return data.rstrip(b"\r\n") if data.endswith(b"\n") else data


def _refuse_empty_passphrase(args: argparse.Namespace) -> None:
    """Empty stdin for a passphrase-protected identity is a usage error, not a guess.

    The agent would count it as a failed unlock (and grow the delay before the next one). An
    identity with no passphrase unlocks with empty stdin, as scripts do.
    """
    st = call(args, p.Status(), p.StatusReply)
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


def _identity_done(reply: p.Response, verb: str) -> int:
    assert isinstance(reply, p.IdentityReply)
    say(f"{verb} RSA-{reply.bits} identity {reply.fingerprint}")
    if not reply.passphrase_protected:
        say(
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
    reply = call(
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
    reply = call(args, request, p.IdentityReply, timeout=INTERACTIVE_TIMEOUT)
    return _identity_done(reply, "imported")


def cmd_unlock(args: argparse.Namespace) -> int:
    if args.passphrase_stdin:
        passphrase = _read_passphrase()
        if not passphrase:
            _refuse_empty_passphrase(args)
        request = p.Unlock(passphrase=passphrase)
    else:
        request = p.Unlock(pinentry=_where())
    call(args, request, p.Ok, timeout=INTERACTIVE_TIMEOUT)
    say("unlocked")
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
    call(args, p.Lock(), p.Ok)
    say("locked")
    return EXIT_OK


def cmd_public_key(args: argparse.Namespace) -> int:
    reply = call(args, p.PublicKey(), p.IdentityReply)
    assert isinstance(reply, p.IdentityReply)
    print(
        reply.fingerprint if args.fingerprint else reply.public_key_pem,
        end="" if not args.fingerprint else "\n",
    )
    return EXIT_OK
