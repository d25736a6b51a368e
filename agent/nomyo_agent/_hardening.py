"""Process hardening at ``serve`` start, and a report of it read back from the OS.

Rules of this module:

- ``harden_process`` never raises: each measure that fails becomes one warning line, and the
  agent goes on (as ssh-agent does when it cannot disable tracing).
- ``report`` states only what the OS says now (``prctl(PR_GET_DUMPABLE)``, ``getrlimit``,
  ``/proc/self/status``), never what we asked for.
- ``mlockall(MCL_CURRENT | MCL_FUTURE)`` only where it can succeed and keep succeeding: with
  ``CAP_IPC_LOCK`` in the effective set, or an ``RLIMIT_MEMLOCK`` that is unlimited or at least
  ``MLOCKALL_HEADROOM`` above what the process maps now. With ``MCL_FUTURE`` in force every later
  allocation counts against the limit, so a merely sufficient limit breaks the agent later
  (TESTING.md: ``MCL_FUTURE`` alone "succeeds" for an ordinary user, then imports fail).
- With ``MCL_ONFAULT`` (Linux 4.4 and later; without it where the kernel refuses it): a page is
  locked when it is first touched, not when it is mapped. A page that holds data is never
  swapped out either way; but without it every mapping is filled when made, under the
  process's memory-map lock, while the thread that asked holds the GIL: a payload buffer of
  8 MiB took 2 ms to map, and the event loop, waiting for the GIL or the lock, answered small
  requests that much later (``bench/agent_load.py``).

What "key memory locked" means (``Hardening.key_memory_locked``): the buffers that hold key bytes
(the stored PEM, the decrypted PKCS#8 DER, passphrases) are ``SecretBuffer``s, each ``mlock``ed.
The unlocked RSA key itself is an OpenSSL object on the ordinary heap, which only ``mlockall``
locks. So the flag is true only when our buffers lock *and* the whole process is locked;
``details`` says which half is missing. Likewise ``key_memory_dontdump`` needs our buffers'
``MADV_DONTDUMP`` *and* core dumps off, since the OpenSSL heap cannot be excluded from a dump.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from nomyo_agent import protocol as p
from nomyo_agent._libc import libc
from nomyo_agent._secret import SecretBuffer

__all__ = ["MLOCKALL_HEADROOM", "harden_child", "harden_process", "report"]

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
PT_DENY_ATTACH = 31  # macOS <sys/ptrace.h>
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
CAP_IPC_LOCK = 14
MLOCKALL_HEADROOM = 1 << 30  # room to grow under a finite memlock limit
LOCKED_THREAD_STACK = 2 << 20  # each thread's stack counts whole against the memlock limit

_state = {"deny_attach": False}


_libc = libc


def _status() -> dict[str, str]:
    """``/proc/self/status`` as a dict (Linux); empty elsewhere."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    return dict(re.findall(r"^(\w+):\s*(.*)$", text, re.MULTILINE))


def _kib(status: dict[str, str], field: str) -> int:
    return int(status.get(field, "0 kB").split()[0])


def _has_cap(status: dict[str, str], cap: int) -> bool:
    return bool(int(status.get("CapEff", "0"), 16) >> cap & 1)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _set_no_core() -> str | None:
    try:
        import resource  # noqa: PLC0415 - POSIX only

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError) as exc:
        return f"core dumps stay enabled: setrlimit(RLIMIT_CORE) failed ({exc})"
    return None


def _set_not_dumpable(libc: ctypes.CDLL | None) -> str | None:
    if libc is None:
        return "tracing protection is not available on this platform"
    if sys.platform.startswith("linux"):
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            return f"same-user debuggers can attach: prctl(PR_SET_DUMPABLE) failed ({_errno()})"
        return None
    if sys.platform == "darwin":
        if libc.ptrace(PT_DENY_ATTACH, 0, None, 0) != 0:
            return f"debuggers can attach: ptrace(PT_DENY_ATTACH) failed ({_errno()})"
        _state["deny_attach"] = True
        return None
    return f"tracing protection is not implemented on {sys.platform}"


def _errno() -> str:
    return os.strerror(ctypes.get_errno())


def _mlockall_blocker(status: dict[str, str]) -> str | None:
    """Why mlockall could fail, now or later; None when it is safe to try."""
    if _has_cap(status, CAP_IPC_LOCK):
        return None
    import resource  # noqa: PLC0415

    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    mapped = _kib(status, "VmSize") * 1024
    if soft >= mapped + MLOCKALL_HEADROOM:
        return None
    return (
        f"process memory is not locked: RLIMIT_MEMLOCK is {_mib(soft)} and the process maps "
        f"{_mib(mapped)}, without CAP_IPC_LOCK (key buffers are still locked one by one; the "
        "unlocked key object can be swapped out; raise LimitMEMLOCK= or `ulimit -l` to fix)"
    )


def harden_process() -> list[str]:
    """Apply every measure this OS offers; returns one warning line per measure that failed."""
    warnings: list[str] = []
    libc = _libc()
    for problem in (_set_not_dumpable(libc), _set_no_core()):
        if problem:
            warnings.append(problem)
    if not sys.platform.startswith("linux") or libc is None:
        warnings.append(f"process memory locking (mlockall) is not used on {sys.platform}")
        return warnings
    blocker = _mlockall_blocker(_status())
    if blocker:
        warnings.append(blocker)
    elif (
        libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0
        and libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0  # a kernel before 4.4
    ):
        warnings.append(f"process memory is not locked: mlockall failed ({_errno()})")
    else:
        with contextlib.suppress(ValueError, RuntimeError):
            threading.stack_size(LOCKED_THREAD_STACK)
    return warnings


def harden_child() -> None:
    """The key worker's subset: no core dumps, not traceable. Silent: it lives a second."""
    _set_no_core()
    _set_not_dumpable(_libc())


def _probe_buffer() -> tuple[bool, bool]:
    with SecretBuffer(1) as probe:
        return probe.locked, probe.dontdump


def report(key_buffers: Iterable[SecretBuffer] = ()) -> p.Hardening:
    """What the OS says about this process now; ``key_buffers`` are the live key buffers, if
    any (with none, a one-page probe buffer stands in for them)."""
    details: list[str] = []
    buffers = [b for b in key_buffers if not b.closed]
    buf_locked, buf_dontdump = (
        (all(b.locked for b in buffers), all(b.dontdump for b in buffers))
        if buffers
        else _probe_buffer()
    )
    libc = _libc()
    not_dumpable = ptrace_denied = False
    if sys.platform.startswith("linux") and libc is not None:
        not_dumpable = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
        ptrace_denied = not_dumpable  # non-dumpable: same-uid ptrace needs CAP_SYS_PTRACE
    elif sys.platform == "darwin":
        ptrace_denied = not_dumpable = _state["deny_attach"]
        details.append("macOS: PT_DENY_ATTACH cannot be read back; reported as requested")
    if not not_dumpable:
        details.append("the process is dumpable: same-user debuggers can attach and read memory")
    try:
        import resource  # noqa: PLC0415

        core_off = resource.getrlimit(resource.RLIMIT_CORE)[0] == 0
    except ImportError:  # pragma: no cover - Windows
        core_off = False
    if not core_off:
        details.append("core dumps are allowed (RLIMIT_CORE is not 0)")
    status = _status()
    size, locked = _kib(status, "VmSize"), _kib(status, "VmLck")
    process_locked = size > 0 and locked >= 0.9 * size
    if not process_locked:
        blocker = _mlockall_blocker(status) if status else None
        details.append(
            blocker or f"process memory is not locked (VmLck {locked} kB of VmSize {size} kB)"
        )
        details.append(
            "the unlocked key lives in OpenSSL's heap, which only a locked process keeps out of "
            "swap; key_memory_locked is false for that reason"
        )
    if not buf_locked:
        details.append("key buffers could not be mlock()ed (RLIMIT_MEMLOCK exhausted?)")
    if not buf_dontdump:
        details.append("key buffers are not excluded from core dumps (no MADV_DONTDUMP here)")
    return p.Hardening(
        not_dumpable=not_dumpable,
        core_dumps_disabled=core_off,
        key_memory_locked=buf_locked and process_locked,
        key_memory_dontdump=buf_dontdump and core_off,
        process_memory_locked=process_locked,
        ptrace_denied=ptrace_denied,
        details=details,
    )
