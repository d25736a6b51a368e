"""One pinentry process and its Assuan conversation: start it for the asker, talk, reap it.

Rules of this module:

- The passphrase is never a ``str`` nor a ``bytes`` object: pinentry's answer is received from
  the socket straight into a scratch ``SecretBuffer`` (``_assuan.Reader`` parses it in place),
  percent-decoded into the caller's ``SecretBuffer``, and the scratch is zeroed on the way out,
  whatever happens.
- Every wait is bounded by the caller's timeout; the child is always reaped, with SIGTERM before
  SIGKILL so that a curses pinentry can restore the terminal.
- A pinentry's ``ERR`` becomes ``PinentryCancelledError`` (the user cancelled) or
  ``PinentryError``; a child that dies, times out or speaks garbage is ``PinentryError`` with the
  last line it wrote to stderr.

What to ask (the commands, their order, asking twice) is ``_pinentry``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn, TypeVar

from nomyo_agent import _assuan
from nomyo_agent._pinentry_env import child_env, program_for
from nomyo_agent._secret import SecretBuffer
from nomyo_agent.errors import PinentryCancelledError, PinentryError
from nomyo_agent.protocol import PinEntry

__all__ = ["Conversation", "run"]

_GPG_ERR_TIMEOUT = 62
_GPG_ERR_CANCELED = 99
_GPG_ERR_FULLY_CANCELED = 198


class Conversation:
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


_T = TypeVar("_T")


async def run(
    program: str,
    where: PinEntry,
    timeout: float,
    body: Callable[[Conversation, Mapping[str, str]], Awaitable[_T]],
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
        talk = Conversation(parent, scratch, name)
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
