"""Asking the user for a passphrase through pinentry, over the Assuan protocol, as gpg-agent does.

The process and socket side of it: the protocol itself (lines, escapes, events) is ``_assuan``.

Rules of this module:

- The passphrase is never a ``str`` nor a ``bytes`` object. pinentry's answer is received from
  the socket straight into a ``SecretBuffer`` we own, percent-decoded into the ``SecretBuffer``
  we return, and the scratch is zeroed on the way out, whatever happens.
- The child's program and environment are chosen by ``_pinentry_env`` (the asker's display or
  terminal, never the agent's); its names are re-exported here for the callers.
- Every wait is bounded by ``timeout``; the child is always reaped.

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

import asyncio
import contextlib
import hmac
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn, TypeVar

from nomyo_agent import _assuan
from nomyo_agent._pinentry_env import (
    child_env,
    default_program,
    locale_of,
    pinentry_env_from,
    pinentry_here,
    pinentry_on_display,
    program_for,
)
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
_GPG_ERR_TIMEOUT = 62
_CONFIRM_ROUNDS = 3
_GPG_ERR_CANCELED = 99
_GPG_ERR_FULLY_CANCELED = 198


class _Conversation:
    """One Assuan session over a socket; received lines land in a scratch ``SecretBuffer``."""

    def __init__(self, sock: socket.socket, scratch: SecretBuffer, program: str) -> None:
        self._sock = sock
        self._reader = _assuan.Reader(scratch.view, peer=program)
        self._program = program
        self.statuses: list[bytes] = []

    async def send(self, command: bytes, text: str | None = None) -> None:
        line = _assuan.command(command, text)
        await asyncio.get_running_loop().sock_sendall(self._sock, line)

    async def _event(self) -> _assuan.Event:
        loop = asyncio.get_running_loop()
        while True:
            event = self._reader.next_event()
            if not isinstance(event, _assuan.NeedData):
                return event
            got = await loop.sock_recv_into(self._sock, self._reader.free())
            if got == 0:
                raise EOFError
            self._reader.filled(got)

    async def result(self, into: SecretBuffer | None = None) -> int:
        """Read up to ``OK``; decode ``D`` lines into ``into``; return the decoded length."""
        size = 0
        while True:
            match await self._event():
                case _assuan.Ok():
                    return size
                case _assuan.Data(raw) if into is not None:
                    size = _assuan.unescape_into(raw, into.view, size, "passphrase")
                case _assuan.Err(code, text):
                    _raise_err(code, text, self._program)
                case _assuan.Status(keyword):
                    self.statuses.append(keyword)
                case _assuan.Inquire(keyword):
                    raise PinentryError(
                        f"{self._program} asked for {keyword.decode('ascii', 'replace')}, "
                        "which a pinentry never does"
                    )
                case _:  # comments, and data nobody asked for
                    continue


def _raise_err(code: int, text: str, program: str) -> NoReturn:
    if code & 0xFFFF in (_GPG_ERR_CANCELED, _GPG_ERR_FULLY_CANCELED):
        raise PinentryCancelledError("the passphrase entry was cancelled", hint="")
    if code & 0xFFFF == _GPG_ERR_TIMEOUT:
        raise PinentryError(
            f"{program} timed out waiting for the passphrase", hint="unlock again when ready"
        )
    raise PinentryError(f"{program} failed: {text.lower() or 'unknown error'}")


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

    async def ask(talk: _Conversation, env: Mapping[str, str]) -> SecretBuffer:
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

    return await _run(program, where, timeout, ask)


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

    async def ask(talk: _Conversation, env: Mapping[str, str]) -> bool:
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

    return await _run(program, where, timeout, ask)


_T = TypeVar("_T")


async def _run(
    program: str,
    where: PinEntry,
    timeout: float,
    body: Callable[[_Conversation, Mapping[str, str]], Awaitable[_T]],
) -> _T:
    """Start ``program`` for ``where``, hold one conversation (``body``) with it, reap it."""
    program = program_for(program, where)
    name = os.path.basename(program)
    env = child_env(where)
    parent, child = socket.socketpair()
    # stderr goes to a plain pipe read once the child is gone: its last line is the best hint
    # when a pinentry dies (e.g. "cannot open display"), and no asyncio transport outlives us.
    err_r, err_w = os.pipe()
    os.set_blocking(err_r, False)
    proc: asyncio.subprocess.Process | None = None
    scratch = SecretBuffer(_assuan.LINE_MAX)
    answered = False
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                program,
                stdin=child.fileno(),
                stdout=child.fileno(),
                stderr=err_w,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C must not kill it behind our back
            )
        except OSError as exc:
            raise PinentryError(
                f"cannot run the pinentry program {program}: {exc.strerror}"
            ) from exc
        except ValueError as exc:  # the asker's environment holds a NUL: no process can have it
            raise PinentryError(f"cannot run the pinentry program {program}: {exc}") from exc
        finally:
            child.close()
            os.close(err_w)
        parent.setblocking(False)
        talk = _Conversation(parent, scratch, name)
        try:
            # pinentry's own SETTIMEOUT fires first and closes its dialog
            result = await asyncio.wait_for(body(talk, env), timeout + 5)
        except EOFError:
            rc = await _reap(proc, grace=2.0)
            raise PinentryError(
                f"{name} exited ({rc}) before answering{_stderr_tail(err_r)}"
            ) from None
        except TimeoutError:
            raise PinentryError(
                f"nothing was entered within {timeout:g} s", hint="unlock again when ready"
            ) from None
        except OSError as exc:
            raise PinentryError(f"lost the pinentry connection: {exc.strerror}") from exc
        answered = True
        return result
    finally:
        scratch.close()
        parent.close()  # pinentry exits on end of input
        if proc is not None:
            await _reap(proc, grace=2.0 if answered else 0.0)
        os.close(err_r)


async def _options(talk: _Conversation, where: PinEntry, env: Mapping[str, str]) -> None:
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
    talk: _Conversation,
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


async def _set(talk: _Conversation, command: bytes, text: str) -> None:
    await talk.send(command, text)
    await talk.result()


async def _getpin(talk: _Conversation) -> SecretBuffer:
    acc = SecretBuffer(_PIN_MAX)
    try:
        await talk.send(b"GETPIN")
        size = await talk.result(into=acc)
        pin = SecretBuffer(size)
        pin.view[:size] = acc.view[:size]
        return pin
    finally:
        acc.close()


def _stderr_tail(fd: int) -> str:
    with contextlib.suppress(OSError):
        lines = os.read(fd, 4096).decode("utf-8", "replace").strip().splitlines()
        if lines:
            return f": {lines[-1][:200]}"
    return ""


async def _reap(proc: asyncio.subprocess.Process, grace: float) -> int:
    """Wait ``grace`` s for a clean exit, then SIGTERM (so a curses pinentry can restore the
    terminal), then SIGKILL: a pinentry is never left behind."""
    for wait, stop in ((grace, proc.terminate), (1.0, proc.kill), (None, None)):
        if proc.returncode is not None:
            return proc.returncode
        if wait:
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(proc.wait(), wait)
        if stop is None:
            return await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            stop()
    return await proc.wait()
