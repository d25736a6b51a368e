"""SecretBuffer and wipe: locking, dump exclusion and zeroing, read back from the OS."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from nomyo_agent._secret import SecretBuffer, wipe


def _smaps_entry(addr: int) -> dict[str, str]:
    """The /proc/self/smaps block of the mapping that starts at ``addr``."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        start = int(line.split("-", 1)[0], 16) if "-" in line.split(" ", 1)[0] else None
        if start == addr:
            block: dict[str, str] = {}
            for extra in lines[i + 1 :]:
                if "-" in extra.split(" ", 1)[0] and ":" not in extra.split(" ", 1)[0]:
                    break
                key, _, value = extra.partition(":")
                block[key] = value.strip()
            return block
    raise AssertionError(f"no mapping at {addr:#x}")


def _address(buf: SecretBuffer) -> int:
    import ctypes

    anchor = ctypes.c_char.from_buffer(buf.view)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def test_from_bytes_copies_and_closes_to_zero() -> None:
    source = bytearray(b"correct horse battery staple")
    buf = SecretBuffer.from_bytes(source)
    source[:] = b"x" * len(source)
    assert bytes(buf.view) == b"correct horse battery staple"
    assert len(buf) == 28
    keep = buf.view[2:9]  # a slice outlives close: it must see zeros, not the secret
    buf.close()
    assert bytes(keep) == b"\0" * 7
    del keep
    buf.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        _ = buf.view


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/smaps (Linux only)")
def test_locked_and_dontdump_as_the_kernel_sees_it() -> None:
    with SecretBuffer(10_000) as buf:
        assert buf.locked
        assert buf.dontdump
        entry = _smaps_entry(_address(buf))
        assert "dd" in entry["VmFlags"].split()  # MADV_DONTDUMP
        assert "lo" in entry["VmFlags"].split()  # mlock
        assert entry["Locked"] != "0 kB"


def test_repr_is_redacted_and_pickle_refused() -> None:
    buf = SecretBuffer.from_bytes(b"s3cret-value")
    assert repr(buf) == "<SecretBuffer 12 bytes, locked>"
    assert "s3cret" not in str(buf)
    with pytest.raises(TypeError):
        pickle.dumps(buf)
    with pytest.raises(TypeError):
        copy.copy(buf)
    buf.close()
    assert repr(buf) == "<SecretBuffer 12 bytes, closed>"


def test_size_zero() -> None:
    with SecretBuffer(0) as buf:
        assert len(buf) == 0
        assert buf.view.nbytes == 0
    assert SecretBuffer.from_bytes(b"").view.nbytes == 0


def test_large_buffer_round_trip() -> None:
    data = os.urandom(8 << 20)
    with SecretBuffer.from_bytes(memoryview(data)) as buf:
        assert buf.view == data


@pytest.mark.skipif(sys.platform != "linux", reason="setpriv is Linux only")
def test_without_mlock_privilege_still_works_and_zeroes() -> None:
    """Over RLIMIT_MEMLOCK (8 MiB) without CAP_IPC_LOCK: not locked, said so, still zeroed."""
    script = (
        "from nomyo_agent._secret import SecretBuffer\n"
        "b = SecretBuffer.from_bytes(b'k' * (16 << 20))\n"
        "keep = b.view[:4]\n"
        "print(b.locked, b.dontdump, repr(b))\n"
        "b.close(); print(bytes(keep))\n"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-all", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert out.stdout.splitlines() == [
        "False True <SecretBuffer 16777216 bytes, not locked>",
        "b'\\x00\\x00\\x00\\x00'",
    ]


def test_wipe_mutable() -> None:
    ba = bytearray(b"abcdef")
    wipe(ba)
    assert ba == bytearray(6)
    store = bytearray(b"0123456789")
    wipe(memoryview(store)[2:5])
    assert store == bytearray(b"01\0\0\x0056789")
    wipe(bytearray())


def test_wipe_owned_bytes_and_str() -> None:
    key = os.urandom(32)
    wipe(key)
    assert key == bytes(32)
    ro = os.urandom(16)
    wipe(memoryview(ro))
    assert ro == bytes(16)
    text = os.urandom(40).hex()  # a fresh, non-interned ASCII str, as keyring returns
    wipe(text)
    assert text == "\0" * 80
    wide = "\u0101" + os.urandom(5).hex()  # non-ASCII compact str
    wipe(wide)
    assert [ord(c) for c in wide] == [0] * 11  # == "\0" * 11 is false: the kinds differ


def test_wipe_leaves_shared_objects_alone() -> None:
    single = b"a"
    wipe(single)
    assert bytes([97]) == b"a"
    interned = sys.intern("nomyo-shared-" + os.urandom(4).hex())
    before = interned.encode()
    wipe(interned)
    assert interned.encode() == before

    class Sub(str):
        pass

    sub = Sub(os.urandom(8).hex())
    wipe(sub)
    assert sub != "\0" * 16
    with pytest.raises(TypeError):
        wipe(12)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [32, 4096, 64 * 1024])
def test_a_small_wipe_keeps_the_gil(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """ctypes.memset lets go of the GIL, and the event loop could then wait behind a worker to
    take it back: a key's or a frame's wipe zeroes through the GIL-holding memset instead."""
    from nomyo_agent import _secret

    releasing: list[int] = []
    real = _secret.ctypes.memset
    monkeypatch.setattr(
        _secret.ctypes, "memset", lambda at, c, n: (releasing.append(n), real(at, c, n))[1]
    )
    for secret in (bytearray(os.urandom(size)), bytes(bytearray(os.urandom(size)))):
        wipe(secret)
        assert not any(secret)
    large = bytearray(os.urandom(_secret._ZERO_RELEASING))
    wipe(large)
    assert not any(large)
    assert releasing == [len(large)]  # only the large one let go of the GIL
