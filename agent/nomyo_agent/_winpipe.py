r"""Windows transport: the named pipe ``\\.\pipe\nomyo-agent-<user>`` where Unix has a socket.

Rules, each the pipe's answer to a guarantee the Unix socket gets from its 0700 folder:

- Only this user: every instance is created with a protected DACL that allows the current user's
  SID and nothing else (no Everyone-read, unlike a pipe's default DACL), denies the NETWORK
  logon SID outright, and names that SID as owner.
- Local only: ``PIPE_REJECT_REMOTE_CLIENTS`` on every instance.
- No squatting: the first instance is created with ``FILE_FLAG_FIRST_PIPE_INSTANCE``, so an agent
  never joins a pipe someone else created; a client checks that the pipe's owner is its own SID
  before it sends a byte, so it never talks to a pipe another user created first.
- The security descriptor is written as SDDL by a pure function (``_winpipe_spec.pipe_sddl``,
  tested on every platform, like the name and the modes) and turned into a descriptor by
  Windows' own parser (``ConvertStringSecurityDescriptorToSecurityDescriptorW``, freed with
  ``LocalFree``): no hand-packed ACL bytes to get wrong. This module holds only the calls that
  parse the SDDL and create, connect and check handles (ctypes on kernel32/advapi32,
  ``_winapi``, the asyncio proactor); its pure names are re-exported from ``_winpipe_spec``.

Why one module above STYLE.md's 250 lines: all of it is the one Windows-only block behind one
platform test, type-checked as a whole with ``mypy --platform win32`` and never run here; the
ctypes declarations stay next to their only callers.
"""

from __future__ import annotations

import sys
from typing import Any

from nomyo_agent._winpipe_spec import (
    BUFFER_SIZE,
    PIPE_UNLIMITED_INSTANCES,
    default_pipe_name,
    open_mode,
    pipe_mode,
    pipe_sddl,
    sid_from_string,
    sid_to_string,
)
from nomyo_agent.errors import AgentAlreadyRunning

__all__ = [
    "connect_pipe",
    "default_pipe_name",
    "open_mode",
    "open_pipe_connection",
    "pipe_mode",
    "pipe_sddl",
    "serve_pipe",
    "sid_from_string",
    "sid_to_string",
]


def _unsupported() -> OSError:
    return OSError("named pipes exist only on Windows")


# --- Windows only: checked with `mypy --platform win32`, not run on Linux -------------------------

if sys.platform == "win32":
    import _winapi
    import asyncio
    import contextlib
    import ctypes
    import time
    from asyncio import windows_utils
    from collections.abc import Callable, Iterator
    from ctypes import wintypes

    from nomyo_agent.errors import AgentConnectionError, AgentUnavailableError

    _k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _adv = ctypes.WinDLL("advapi32", use_last_error=True)
    INVALID_HANDLE = wintypes.HANDLE(-1).value
    ERROR_FILE_NOT_FOUND, ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY = 2, 5, 231
    ERROR_IO_PENDING, ERROR_BROKEN_PIPE, ERROR_MORE_DATA = 997, 109, 234
    WAIT_TIMEOUT = 0x102
    TOKEN_QUERY, TOKEN_USER_CLASS = 0x0008, 1
    SE_KERNEL_OBJECT, OWNER_SECURITY_INFORMATION = 6, 1
    SDDL_REVISION_1 = 1

    class _SecurityAttributes(ctypes.Structure):
        _fields_ = (
            ("nLength", wintypes.DWORD),
            ("lpSecurityDescriptor", wintypes.LPVOID),
            ("bInheritHandle", wintypes.BOOL),
        )

    _k32.CreateNamedPipeW.argtypes = (
        wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
        wintypes.DWORD, wintypes.DWORD, ctypes.POINTER(_SecurityAttributes),
    )  # fmt: skip
    _k32.CreateNamedPipeW.restype = wintypes.HANDLE
    _k32.GetNamedPipeClientProcessId.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.ULONG))
    _k32.GetNamedPipeClientProcessId.restype = wintypes.BOOL
    _k32.GetCurrentProcess.restype = wintypes.HANDLE
    _k32.LocalFree.argtypes = (wintypes.HLOCAL,)
    _adv.OpenProcessToken.argtypes = (
        wintypes.HANDLE, wintypes.DWORD, ctypes.POINTER(wintypes.HANDLE),
    )  # fmt: skip
    _adv.GetTokenInformation.argtypes = (
        wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID, wintypes.DWORD,
        ctypes.POINTER(wintypes.DWORD),
    )  # fmt: skip
    _adv.GetLengthSid.argtypes = (wintypes.LPVOID,)
    _adv.GetLengthSid.restype = wintypes.DWORD
    _adv.GetSecurityInfo.argtypes = (
        wintypes.HANDLE, ctypes.c_int, wintypes.DWORD, ctypes.POINTER(wintypes.LPVOID),
        ctypes.POINTER(wintypes.LPVOID), ctypes.POINTER(wintypes.LPVOID),
        ctypes.POINTER(wintypes.LPVOID), ctypes.POINTER(wintypes.LPVOID),
    )  # fmt: skip
    _adv.GetSecurityInfo.restype = wintypes.DWORD
    _sddl_to_descriptor = _adv.ConvertStringSecurityDescriptorToSecurityDescriptorW
    _sddl_to_descriptor.argtypes = (
        wintypes.LPCWSTR, wintypes.DWORD, ctypes.POINTER(wintypes.LPVOID),
        ctypes.POINTER(wintypes.ULONG),
    )  # fmt: skip
    _sddl_to_descriptor.restype = wintypes.BOOL

    def _last_error(what: str) -> OSError:
        code = ctypes.get_last_error()
        return ctypes.WinError(code, f"{what}: {ctypes.FormatError(code)}")

    def current_user_sid() -> bytes:
        """This process's user SID, from its token."""
        token = wintypes.HANDLE()
        if not _adv.OpenProcessToken(_k32.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
            raise _last_error("OpenProcessToken")
        try:
            size = wintypes.DWORD(0)
            _adv.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            if not _adv.GetTokenInformation(token, TOKEN_USER_CLASS, buf, size, ctypes.byref(size)):
                raise _last_error("GetTokenInformation")
            psid = ctypes.cast(buf, ctypes.POINTER(wintypes.LPVOID))[0]  # TOKEN_USER.User.Sid
            return ctypes.string_at(psid, _adv.GetLengthSid(psid))
        finally:
            _k32.CloseHandle(token)

    def pipe_owner_sid(handle: int) -> bytes:
        owner = wintypes.LPVOID()
        descriptor = wintypes.LPVOID()
        rc = _adv.GetSecurityInfo(
            handle, SE_KERNEL_OBJECT, OWNER_SECURITY_INFORMATION, ctypes.byref(owner),
            None, None, None, ctypes.byref(descriptor),
        )  # fmt: skip
        if rc != 0:
            raise ctypes.WinError(rc)
        try:
            return ctypes.string_at(owner.value or 0, _adv.GetLengthSid(owner))
        finally:
            _k32.LocalFree(descriptor)

    @contextlib.contextmanager
    def _security_descriptor(sddl: str) -> Iterator[int]:
        """``sddl`` parsed by Windows into a self-relative descriptor, alive for the block (every
        pipe instance is created with it) and freed with ``LocalFree`` after it."""
        descriptor = wintypes.LPVOID()
        if not _sddl_to_descriptor(sddl, SDDL_REVISION_1, ctypes.byref(descriptor), None):
            raise _last_error("ConvertStringSecurityDescriptorToSecurityDescriptorW")
        try:
            yield int(descriptor.value or 0)
        finally:
            _k32.LocalFree(descriptor)

    def _check_owner(handle: int, name: str) -> None:
        if pipe_owner_sid(handle) != current_user_sid():
            raise AgentConnectionError(
                f"the pipe {name} belongs to another user; refusing to talk to it",
                hint="another account created this pipe first; find and stop its process",
            )

    def _create_instance(name: str, first: bool, descriptor: int) -> int:
        attrs = _SecurityAttributes(ctypes.sizeof(_SecurityAttributes), descriptor, 0)
        handle = _k32.CreateNamedPipeW(
            name, open_mode(first), pipe_mode(), PIPE_UNLIMITED_INSTANCES,
            BUFFER_SIZE, BUFFER_SIZE, 0, ctypes.byref(attrs),
        )  # fmt: skip
        if handle is None or handle == INVALID_HANDLE:
            code = ctypes.get_last_error()
            if first and code in (ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY):
                raise AgentAlreadyRunning(
                    f"the pipe {name} exists already: another agent (or someone else) holds it",
                    hint="use that agent (`nomyo-agent status`), or stop it first",
                )
            raise ctypes.WinError(code, f"CreateNamedPipeW({name})")
        return int(handle)

    class PipeConnection:
        """A connected client end with the socket methods ``AgentConnection`` uses."""

        def __init__(self, handle: int) -> None:
            self._handle = handle
            self._timeout: float | None = None

        def settimeout(self, timeout: float | None) -> None:
            self._timeout = timeout

        def _wait(self, ov: _winapi.Overlapped) -> int:
            ms = _winapi.INFINITE if self._timeout is None else int(self._timeout * 1000)
            if _winapi.WaitForSingleObject(ov.event, ms) == WAIT_TIMEOUT:
                ov.cancel()
                ov.GetOverlappedResult(True)
                raise TimeoutError("timed out")
            transferred, err = ov.GetOverlappedResult(True)
            if err not in (0, ERROR_MORE_DATA):
                raise ctypes.WinError(err)
            return int(transferred)

        def sendall(self, data: bytes) -> None:
            view = memoryview(data)
            while view:
                ov, err = _winapi.WriteFile(self._handle, view, overlapped=True)
                if err not in (0, ERROR_IO_PENDING):
                    raise ctypes.WinError(err)
                view = view[self._wait(ov) :]

        def recv_into(self, buffer: memoryview) -> int:
            try:
                ov, err = _winapi.ReadFile(self._handle, len(buffer), overlapped=True)
            except BrokenPipeError:
                return 0
            if err not in (0, ERROR_IO_PENDING, ERROR_MORE_DATA):
                if err == ERROR_BROKEN_PIPE:
                    return 0
                raise ctypes.WinError(err)
            try:
                self._wait(ov)
            except OSError as exc:
                if getattr(exc, "winerror", None) == ERROR_BROKEN_PIPE:
                    return 0
                raise
            data = ov.getbuffer() or b""
            buffer[: len(data)] = data
            return len(data)

        def close(self) -> None:
            if self._handle:
                _winapi.CloseHandle(self._handle)
                self._handle = 0

    def connect_pipe(name: str, timeout: float | None) -> PipeConnection:
        """Connect to the agent's pipe, waiting up to ``timeout`` while every instance is busy."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                handle = _winapi.CreateFile(
                    name, _winapi.GENERIC_READ | _winapi.GENERIC_WRITE, 0, _winapi.NULL,
                    _winapi.OPEN_EXISTING, _winapi.FILE_FLAG_OVERLAPPED, _winapi.NULL,
                )  # fmt: skip
                break
            except OSError as exc:
                if exc.winerror == ERROR_FILE_NOT_FOUND:
                    raise AgentUnavailableError(f"no agent is listening at {name}") from exc
                if exc.winerror != ERROR_PIPE_BUSY:
                    raise AgentConnectionError(f"cannot connect to {name}: {exc}") from exc
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise AgentConnectionError(f"the agent at {name} stayed busy") from exc
                with contextlib.suppress(OSError):  # it fails when the pipe vanished meanwhile
                    _winapi.WaitNamedPipe(name, max(1, min(int(left * 1000), 1000)))
        conn = PipeConnection(handle)
        try:
            _check_owner(handle, name)
        except BaseException:
            conn.close()
            raise
        conn.settimeout(timeout)
        return conn

    async def open_pipe_connection(
        name: str, limit: int = 16 * 1024 * 1024
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The asyncio form of ``connect_pipe`` (needs the default proactor event loop)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_pipe_connection(  # type: ignore[attr-defined]
            lambda: protocol, name
        )
        try:
            _check_owner(transport.get_extra_info("pipe").fileno(), name)
        except BaseException:
            transport.close()
            raise
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    ProtocolFactory = Callable[[int], asyncio.Protocol]

    async def serve_pipe(name: str, protocol_factory: ProtocolFactory) -> None:
        """Accept clients on ``name`` until cancelled; each connection gets
        ``protocol_factory(peer_pid)``, the same ``asyncio.Protocol`` the Unix socket uses, so
        the agent has one connection handler for both transports. Raises ``AgentError`` if the
        pipe exists already (first-instance rule: nobody can squat the name before us).

        There is always one unconnected instance waiting, so clients never see "not found"
        between two accepts.
        """
        loop = asyncio.get_running_loop()
        proactor = loop._proactor  # type: ignore[attr-defined]  # the IOCP behind the loop
        sddl = pipe_sddl(sid_to_string(current_user_sid()))
        with _security_descriptor(sddl) as descriptor:
            await _accept_loop(loop, proactor, name, descriptor, protocol_factory)

    async def _accept_loop(
        loop: asyncio.AbstractEventLoop,
        proactor: Any,  # the loop's IOCP proactor: a private attribute, untyped
        name: str,
        descriptor: int,
        protocol_factory: ProtocolFactory,
    ) -> None:
        pending = windows_utils.PipeHandle(_create_instance(name, True, descriptor))
        try:
            while True:
                try:
                    pipe = await proactor.accept_pipe(pending)
                except OSError:  # the client left before we accepted it (ERROR_NO_DATA ...)
                    pending.close()
                    pending = windows_utils.PipeHandle(_create_instance(name, False, descriptor))
                    continue
                pending = windows_utils.PipeHandle(_create_instance(name, False, descriptor))
                pid = wintypes.ULONG(0)
                _k32.GetNamedPipeClientProcessId(pipe.fileno(), ctypes.byref(pid))
                # The transport calls connection_made/data_received/connection_lost itself.
                loop._make_duplex_pipe_transport(  # type: ignore[attr-defined]
                    pipe, protocol_factory(int(pid.value))
                )
        finally:
            pending.close()

else:

    def connect_pipe(name: str, timeout: float | None) -> object:
        """Windows only."""
        raise _unsupported()

    async def open_pipe_connection(name: str) -> tuple[object, object]:
        """Windows only."""
        raise _unsupported()

    async def serve_pipe(name: str, protocol_factory: object) -> None:
        """Windows only."""
        raise _unsupported()
