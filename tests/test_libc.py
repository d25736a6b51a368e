"""glibc's allocator as the agent sets it up (``_libc.return_large_buffers``), read back from the
process itself in a child (mallopt cannot be undone)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt and sbrk")

_SCRIPT = r"""
import ctypes, json
from nomyo_agent import _libc
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
assert _libc.return_large_buffers()
def socket_read():  # what asyncio allocates for each read of up to 256 KiB
    buf = bytearray(256 * 1024)
    grown = libc.sbrk(0)
    del buf
    return grown - libc.sbrk(0)
def large():  # a payload's buffer
    buf = bytearray(4 << 20)
    inside = libc.sbrk(0)
    del buf
    return inside
socket_read()
print(json.dumps({
    "given_back": [socket_read() for _ in range(3)],
    "break": [libc.sbrk(0), large(), libc.sbrk(0)],
}))
"""


def test_a_socket_reads_buffer_stays_in_the_heap_and_a_payloads_does_not() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=30, check=True
    )
    result = json.loads(out.stdout)
    # Freeing a read's buffer at the heap's top does not shrink the heap (glibc's default trim
    # threshold of 128 KiB did: a brk each way and its pages touched afresh for every read).
    assert result["given_back"] == [0, 0, 0]
    # A 4 MiB payload is a mapping of its own: the heap's break does not move for it.
    assert len(set(result["break"])) == 1
