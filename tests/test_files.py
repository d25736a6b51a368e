"""``_files.atomic_write``, the one helper every whole-file write goes through: a reader sees the
old file or the new one, never half; ``replace=False`` creates only, and two creators racing
leave exactly one whole file."""

from __future__ import annotations

import os
import stat
import threading
import tracemalloc
from pathlib import Path

from nomyo_agent._files import atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_replaces_whole_and_private_by_default(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state.json"
    assert atomic_write(path, b"one") is True
    assert atomic_write(path, bytearray(b"two")) is True
    assert path.read_bytes() == b"two"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700  # the folder it created
    assert os.listdir(path.parent) == ["state.json"]  # no temporary left


def test_a_mode_for_files_others_may_read(tmp_path: Path) -> None:
    path = tmp_path / "nomyo-agent.service"
    atomic_write(path, memoryview(b"[Unit]\n"), mode=0o644)
    assert _mode(path) == 0o644
    assert path.read_bytes() == b"[Unit]\n"


def test_create_only_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "router.pem"
    assert atomic_write(path, b"first", replace=False) is True
    assert atomic_write(path, b"second", replace=False) is False
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["router.pem"]


def test_racing_creators_leave_one_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    payloads = [bytes([i]) * 65536 for i in range(8)]
    results: list[bool] = []
    start = threading.Barrier(len(payloads))

    def create(data: bytes) -> None:
        start.wait()
        results.append(atomic_write(path, data, replace=False))

    threads = [threading.Thread(target=create, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert path.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["key"]


def test_the_data_is_not_copied_into_a_write_buffer(tmp_path: Path) -> None:
    """The identity file's PEM goes through here: a buffered write would leave a copy of it in
    a buffer nobody wipes. tracemalloc sees every allocation of the interpreter; at no moment
    may the write hold as much as the secret again (a buffered writer takes 4 or 8 KiB)."""
    secret = bytearray(os.urandom(3000))
    target = tmp_path / "identity.key"
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        atomic_write(target, memoryview(secret))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert target.read_bytes() == secret
    assert peak - base < len(secret)
