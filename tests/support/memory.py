"""Searching a live process's memory (``/proc/PID/mem``) for secrets, for the tests that prove
where key material is and is not. Needs root or the same uid with ptrace access (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hit", "found", "scan"]

CHUNK = 16 << 20


@dataclass(frozen=True)
class Hit:
    needle: str
    address: int
    region: str  # the mapping's path, or [anon]


def scan(pid: int, needles: dict[str, bytes]) -> list[Hit]:
    """Every occurrence of every needle in the readable mappings of ``pid``."""
    hits: list[Hit] = []
    longest = max(len(n) for n in needles.values())
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else "[anon]"
            if not fields[1].startswith("r") or name in ("[vvar]", "[vsyscall]"):
                continue
            pos = start
            while pos < end:
                size = min(CHUNK + longest, end - pos)
                try:
                    data = os.pread(fd, size, pos)
                except OSError:
                    break  # e.g. a guard page
                for label, needle in needles.items():
                    i = data.find(needle)
                    while i != -1:
                        if i < CHUNK or pos + size == end:  # overlap: count each hit once
                            hits.append(Hit(label, pos + i, name))
                        i = data.find(needle, i + 1)
                pos += CHUNK
    finally:
        os.close(fd)
    return hits


def found(pid: int, needles: dict[str, bytes]) -> set[str]:
    """The names of the needles that occur anywhere in ``pid``'s readable memory."""
    return {hit.needle for hit in scan(pid, needles)}
