"""Process hardening, checked against what /proc says, in child processes (it is irreversible).

Root here holds CAP_IPC_LOCK, so ``mlockall`` works for it; the ordinary-user path is root
without that capability (``setpriv --bounding-set=-ipc_lock``), where RLIMIT_MEMLOCK (8 MiB) is
far below what a Python process with cryptography maps (TESTING.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nomyo_agent import _hardening
from support.desktop import require_programs

_SCRIPT = r"""
import ctypes, json, os, sys
from nomyo_agent import _hardening
from nomyo_agent._secret import SecretBuffer
warnings = _hardening.harden_process() if sys.argv[1] == "process" else _hardening.harden_child()
report = _hardening.report()
# The process must keep working after hardening: new imports, big allocations, threads.
import decimal, email.parser, mmap, threading
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
before = rss()
blob = mmap.mmap(-1, 64 << 20)
mapped = rss()
blob.write(b"x" * len(blob))
touched = rss()
t = threading.Thread(target=lambda: None); t.start(); t.join()
big = SecretBuffer(16 << 20)  # over an 8 MiB memlock limit unless the process may lock it all
with_big = _hardening.report([big])
libc = ctypes.CDLL(None)
print(json.dumps({
    "warnings": warnings,
    "report": {f: getattr(report, f) for f in report.__struct_fields__},
    "big_locked": big.locked,
    "rss_kib": [before, mapped, touched],
    "with_big": {f: getattr(with_big, f) for f in with_big.__struct_fields__},
    "dumpable": libc.prctl(3, 0, 0, 0, 0),
    "status": open("/proc/self/status").read(),
    "limits": open("/proc/self/limits").read(),
}))
"""


def _run(mode: str, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    out = subprocess.run(
        [*prefix, sys.executable, "-c", _SCRIPT, mode],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _kib(status: str, field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert m, field
    return int(m.group(1))


def _core_limit(limits: str) -> list[str]:
    line = next(x for x in limits.splitlines() if x.startswith("Max core file size"))
    return line.split()[4:6]


def _may_lock_everything() -> bool:
    """What this test process could do: CAP_IPC_LOCK, or an unlimited memlock limit."""
    status = Path("/proc/self/status").read_text()
    cap = int(re.search(r"^CapEff:\s+(\w+)", status, re.MULTILINE).group(1), 16)  # type: ignore[union-attr]
    import resource

    return bool(cap >> 14 & 1) or resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == -1


def _check_against_proc(result: dict[str, Any]) -> None:
    """Every claim of the report matches the kernel's own view."""
    report, status = result["report"], result["status"]
    assert report["not_dumpable"] is (result["dumpable"] == 0)
    assert report["core_dumps_disabled"] is (_core_limit(result["limits"]) == ["0", "0"])
    locked = _kib(status, "VmLck") >= 0.9 * _kib(status, "VmSize")
    assert report["process_memory_locked"] is locked


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc and prctl")


def test_with_ipc_lock_everything_holds() -> None:
    result = _run("process")
    _check_against_proc(result)
    report = result["report"]
    assert report["not_dumpable"]
    assert report["ptrace_denied"]
    assert report["core_dumps_disabled"]
    assert report["key_memory_dontdump"]
    expect_locked = _may_lock_everything()
    assert report["process_memory_locked"] is expect_locked
    assert report["key_memory_locked"] is expect_locked
    if expect_locked:
        assert result["warnings"] == []
        assert report["details"] == []
        assert result["big_locked"]
        # MCL_FUTURE: memory mapped after hardening (64 MiB, a thread) is locked too.
        assert _kib(result["status"], "VmLck") >= 0.9 * _kib(result["status"], "VmSize")
        # MCL_ONFAULT: locked as it is touched, not filled when mapped (mapping it cost the
        # agent's event loop milliseconds); once touched, all of it is resident.
        before, mapped, touched = result["rss_kib"]
        assert mapped - before < 8 << 10
        assert touched - before >= 60 << 10


def test_ordinary_user_skips_mlockall_and_says_why() -> None:
    require_programs("setpriv")
    result = _run("process", ("setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-all"))
    _check_against_proc(result)
    report = result["report"]
    assert report["not_dumpable"]
    assert report["core_dumps_disabled"]
    assert not report["process_memory_locked"]
    assert not report["key_memory_locked"]  # the OpenSSL heap is not locked
    assert _kib(result["status"], "VmLck") < 1024
    (warning,) = result["warnings"]
    assert "RLIMIT_MEMLOCK is 8 MiB" in warning
    assert "CAP_IPC_LOCK" in warning
    assert any("OpenSSL's heap" in d for d in report["details"])
    # A buffer over the limit is not locked, and the report says so instead of pretending.
    assert not result["big_locked"]
    assert not result["with_big"]["key_memory_locked"]
    assert any("could not be mlock()ed" in d for d in result["with_big"]["details"])


def test_child_subset() -> None:
    result = _run("child")
    assert result["warnings"] is None
    _check_against_proc(result)
    assert result["report"]["not_dumpable"]
    assert result["report"]["core_dumps_disabled"]
    assert not result["report"]["process_memory_locked"]


def test_report_of_an_unhardened_process_is_honest() -> None:
    """This pytest process was never hardened: the report must say so, not assume."""
    report = _hardening.report()
    assert not report.not_dumpable
    assert not report.ptrace_denied
    assert any("dumpable" in d for d in report.details)
    assert report.process_memory_locked is (
        _kib(Path("/proc/self/status").read_text(), "VmLck") > 0
    )


def test_mlockall_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    gib = 1 << 30
    status = {"CapEff": "0", "VmSize": f"{100 * 1024} kB"}  # 100 MiB mapped, no capability
    for soft, allowed in (
        (8 << 20, False),
        (200 << 20, False),  # enough now, but MCL_FUTURE would break later allocations
        (100 * (1 << 20) + gib, True),
        (resource.RLIM_INFINITY, True),
    ):
        monkeypatch.setattr(resource, "getrlimit", lambda _which, soft=soft: (soft, soft))
        assert (_hardening._mlockall_blocker(status) is None) is allowed, soft
    assert _hardening._mlockall_blocker({**status, "CapEff": f"{1 << 14:x}"}) is None
