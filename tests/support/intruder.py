"""Another local user's fake agent: a listener run as uid 65534 that records what it is sent.

TESTING.md: another uid is ``setpriv --reuid=65534 ...`` running ``/usr/bin/python3.11`` (the
pyenv Python is unreachable for other uids). The fake owns its socket folder, as an attacker who
took ``/tmp/nomyo-agent-UID`` first would, and opens it and the socket to everyone so that the
victim can connect. It never answers; for each connection it prints how many bytes it received,
so a test asserts on what crossed, not on timing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.desktop import require_programs, stop_group

__all__ = [
    "AS_NOBODY", "NOBODY", "Intruder", "open_intruder", "python_for_nobody", "shared_tmp",
]  # fmt: skip

NOBODY = 65534
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
PYTHON = "/usr/bin/python3.11"

# stdlib only, run by uid 65534. argv: socket path. Prints "ready", then one line per connection
# with the number of bytes it received before the peer closed (or 2 s of silence).
_FAKE = r"""
import os, socket, sys
path = sys.argv[1]
os.umask(0)
os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    n = 0
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            n += len(b)
    except OSError:
        pass
    c.close()
    print(n, flush=True)
"""


@dataclass
class Intruder:
    path: str
    proc: subprocess.Popen[bytes]

    def next_connections(self, count: int) -> list[int]:
        """Wait for the next ``count`` connections to end; the bytes each one received."""
        assert self.proc.stdout is not None
        return [int(self.proc.stdout.readline()) for _ in range(count)]

    def received(self) -> list[int]:
        """Stop the fake; the byte count of every connection it accepted."""
        stop_group(self.proc)
        assert self.proc.stdout is not None
        with self.proc.stdout:
            return [int(line) for line in self.proc.stdout.read().split()]


@contextlib.contextmanager
def shared_tmp() -> Iterator[Path]:
    """A fresh temp dir like /tmp (1777, reachable by every uid), for ``TMPDIR``."""
    folder = Path(tempfile.mkdtemp(prefix="nomyo-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def open_intruder(path: str | os.PathLike[str]) -> Iterator[Intruder]:
    """Uid 65534 listening at ``path`` (it creates the folder, owned by itself, 0755)."""
    require_programs("setpriv", PYTHON)
    proc = subprocess.Popen(
        [*AS_NOBODY, PYTHON, "-I", "-c", _FAKE, os.fspath(path)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd="/", start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        stop_group(proc)
        proc.stdout.close()
        pytest.fail(f"the fake agent of uid {NOBODY} did not start at {path}")
    try:
        yield Intruder(os.fspath(path), proc)
    finally:
        stop_group(proc)
        proc.stdout.close()


def python_for_nobody(env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """An interpreter that user 65534 can run with this project importable, and the variables
    it needs.

    The venv's own may sit under a home folder others cannot enter (pyenv under /root); the
    system Python of the same minor version then runs the venv's packages from PYTHONPATH
    (their wheels are built for that minor version).
    """
    candidates: list[tuple[str, dict[str, str]]] = [(sys.executable, {})]
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    site = sysconfig.get_paths()["purelib"]
    root = Path(__file__).resolve().parents[2]
    candidates.append((system, {"PYTHONPATH": f"{site}:{root / 'agent'}:{root / 'client'}"}))
    for python, extra in candidates:
        # Inside a user namespace, as a service would run: stricter than outside here.
        probe = subprocess.run(
            [*AS_NOBODY, "unshare", "--user", python, "-c", "import nomyo_agent._daemon, keyring"],
            env={**env, **extra}, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return python, extra
    pytest.fail(f"no Python that user {NOBODY} can run imports nomyo_agent (tried {candidates})")
