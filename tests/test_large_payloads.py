"""Payloads of megabytes through a real agent: sealed and opened on a worker at a lower priority,
decoded as a view into their frame and written back a slice at a time (_workers.py, _splice.py),
whole and in order."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from nomyo_agent import _keys, _workers
from nomyo_agent import protocol as p
from nomyo_agent._envelope import open_package, seal
from nomyo_agent._splice import SPLICE_BYTES
from nomyo_agent.errors import DecryptFailedError
from support.agent import RunningAgent
from support.keys import rsa_key


def test_megabyte_seals_and_opens_come_back_whole(agent: RunningAgent) -> None:
    agent.keygen()
    router = rsa_key(2048, 0)
    plaintext = os.urandom(2 * SPLICE_BYTES).hex().encode()  # a view, and replies in slices
    with agent.connect(timeout=60) as conn:
        ours = _keys.load_router_key(conn.call(p.PublicKey(), p.IdentityReply).public_key_pem)
        sealed = conn.call(
            p.Seal(
                origin="http://127.0.0.1:1",
                router_key_pem=_keys.public_pem(router.public_key()),
                plaintext=plaintext,
            ),
            p.SealReply,
        )
        assert open_package(router, sealed.package).plaintext == plaintext
        answer = seal(ours, plaintext, processed_at=3.0)
        opened = conn.call(p.Open(package=answer), p.OpenReply)
        assert (opened.plaintext, opened.processed_at) == (plaintext, 3.0)
        tampered = answer[: len(answer) // 2]
        with pytest.raises(DecryptFailedError):
            conn.call(p.Open(package=tampered), p.OpenReply)
        # The connection goes on: the next (small) request is answered after the large ones.
        again = conn.call(p.Open(package=seal(ours, b"small")), p.OpenReply)
        assert again.plaintext == b"small"
    counters = agent.status().counters
    assert (counters.seals, counters.opens, counters.errors) == (1, 2, 1)
    if sys.platform == "linux":  # the large work ran on threads the kernel gives a core last
        threads = _nice_values(agent.pid)
        lowered = min(19, threads[agent.pid] + _workers.BULK_NICE)
        assert lowered > threads[agent.pid], threads
        assert lowered in threads.values(), threads


def _nice_values(pid: int) -> dict[int, int]:
    """Each thread's nice value as the kernel has it (field 19 of /proc/PID/task/TID/stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values[int(task.name)] = int(fields[16])
    return values
