"""Asking the user for a passphrase through pinentry, over the Assuan protocol, as gpg-agent does.

What to ask and in which order. The process and its socket are ``_pinentry_session``'s, the
protocol itself (lines, escapes, events) is ``_assuan``.

Rules of this module:

- The passphrase is never a ``str`` nor a ``bytes`` object: ``_pinentry_session`` receives it
  into buffers we own; here it moves only between ``SecretBuffer``s, compared in constant time.
- The child's program and environment are chosen by ``_pinentry_env`` (the asker's display or
  terminal, never the agent's); its names are re-exported here for the callers.
- Every wait is bounded by ``timeout``; the child is always reaped (``_pinentry_session``).

Errors: the user cancelling is ``PinentryCancelledError``; a missing program, a crash, garbage
on the wire or a timeout is ``PinentryError`` with a hint.

Example::

    where = pinentry_env_from(os.environ, None)
    secret = await get_passphrase(default_program(), where, title="nomyo-agent",
                                  description="Unlock the identity 3f2a:91c0:0d4e:77b1")
    try:
        use(secret.view)
    finally:
        secret.close()
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Mapping

from nomyo_agent._pinentry_env import (
    default_program,
    locale_of,
    pinentry_env_from,
    pinentry_here,
    pinentry_on_display,
    program_for,
)
from nomyo_agent._pinentry_session import Conversation, run
from nomyo_agent._secret import SecretBuffer
from nomyo_agent.errors import PinentryCancelledError, PinentryError
from nomyo_agent.protocol import PinEntry

__all__ = [
    "confirm",
    "default_program",
    "get_passphrase",
    "pinentry_env_from",
    "pinentry_here",
    "pinentry_on_display",
    "program_for",
]

_PIN_MAX = 4096  # decoded passphrase bytes we accept; longer is a pinentry bug or an attack
_CONFIRM_ROUNDS = 3


async def get_passphrase(
    program: str,
    where: PinEntry,
    *,
    title: str,
    description: str,
    prompt: str = "Passphrase:",
    error: str | None = None,
    confirm: bool = False,
    timeout: float = 300.0,
) -> SecretBuffer:
    """Run ``program`` on the asker's display or terminal and return what the user typed.

    ``confirm`` asks twice (a new passphrase) and returns only when both entries match. The
    caller owns the result and must ``close()`` it. Raises ``PinentryCancelledError`` when the
    user cancels, ``PinentryError`` for anything else that keeps us from getting an answer.
    """

    async def ask(talk: Conversation, env: Mapping[str, str]) -> SecretBuffer:
        return await _ask(
            talk,
            where,
            env,
            title=title,
            description=description,
            prompt=prompt,
            error=error,
            confirm=confirm,
            timeout=timeout,
        )

    return await run(program, where, timeout, ask)


async def confirm(
    program: str,
    where: PinEntry,
    *,
    title: str,
    description: str,
    ok: str = "Allow",
    cancel: str = "Deny",
    timeout: float = 60.0,
) -> bool:
    """Ask a yes/no question with pinentry's ``CONFIRM``: True for ``ok``, False for ``cancel``.

    A prompt nobody answers within ``timeout`` raises ``PinentryError``, as does a pinentry
    that cannot be run; callers that must not hang treat both as a no.
    """

    async def ask(talk: Conversation, env: Mapping[str, str]) -> bool:
        await talk.result()  # the greeting
        await _options(talk, where, env)
        for command, text in ((b"SETTITLE", title), (b"SETDESC", description), (b"SETOK", ok),
                              (b"SETCANCEL", cancel)):  # fmt: skip
            await talk.send(command, text)
            with contextlib.suppress(PinentryError):
                await talk.result()
        await talk.send(b"SETTIMEOUT", str(max(1, int(timeout))))
        with contextlib.suppress(PinentryError):
            await talk.result()
        await talk.send(b"CONFIRM")
        try:
            await talk.result()
        except PinentryCancelledError:
            return False
        return True

    return await run(program, where, timeout, ask)


async def _options(talk: Conversation, where: PinEntry, env: Mapping[str, str]) -> None:
    """Tell pinentry where to draw: the asker's terminal, locale and display."""
    options = []
    if where.ttyname:
        options.append("ttyname=" + where.ttyname)
        options.append("ttytype=" + env.get("TERM", "xterm"))
    if locale_of(env):
        options.append("lc-ctype=" + (locale_of(env) or ""))
    if env.get("DISPLAY"):
        options.append("display=" + env["DISPLAY"])
    for option in options:
        await talk.send(b"OPTION", option)
        with contextlib.suppress(PinentryError):  # an option this flavour does not know
            await talk.result()


async def _ask(
    talk: Conversation,
    where: PinEntry,
    env: Mapping[str, str],
    *,
    title: str,
    description: str,
    prompt: str,
    error: str | None,
    confirm: bool,
    timeout: float,
) -> SecretBuffer:
    await talk.result()  # the greeting
    await _options(talk, where, env)
    commands = [
        (b"SETTIMEOUT", str(max(1, int(timeout)))),
        (b"SETTITLE", title),
        (b"SETDESC", description),
        (b"SETPROMPT", prompt),
    ]
    if error:
        commands.append((b"SETERROR", error))
    if confirm:
        commands.append((b"SETREPEATERROR", "the passphrases do not match"))
        commands.append((b"SETREPEAT", "Repeat:"))
    for command, arg in commands:
        await talk.send(command, arg)
        with contextlib.suppress(PinentryError):  # e.g. an old pinentry without SETREPEAT
            await talk.result()
    first = await _getpin(talk)
    if not confirm or b"PIN_REPEATED" in talk.statuses:
        return first
    # This flavour cannot repeat by itself (pinentry-curses 1.2.1): ask again and compare,
    # and start over on a mismatch, as the flavours that can repeat do.
    for _ in range(_CONFIRM_ROUNDS):
        try:
            await _set(talk, b"SETERROR", "")
            await _set(talk, b"SETPROMPT", "Repeat:")
            second = await _getpin(talk)
            try:
                same = len(first) == len(second) and hmac.compare_digest(first.view, second.view)
            finally:
                second.close()
            if same:
                return first
            first.close()
            await _set(talk, b"SETERROR", "the passphrases do not match")
            await _set(talk, b"SETPROMPT", prompt)
            first = await _getpin(talk)
        except BaseException:
            first.close()
            raise
    first.close()
    raise PinentryError("the passphrases did not match", hint="try again, typing the same twice")


async def _set(talk: Conversation, command: bytes, text: str) -> None:
    await talk.send(command, text)
    await talk.result()


async def _getpin(talk: Conversation) -> SecretBuffer:
    acc = SecretBuffer(_PIN_MAX)
    try:
        await talk.send(b"GETPIN")
        size = await talk.result(into=acc)
        pin = SecretBuffer(size)
        pin.view[:size] = acc.view[:size]
        return pin
    finally:
        acc.close()
