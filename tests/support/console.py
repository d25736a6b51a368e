"""The installed console scripts (``nomyo-agent``, ``nomyo-chat``, ``nomyo-tray``,
``nomyo-devserver``), run as a user runs them: the entry points beside this test's Python.

``console("nomyo-agent", "status", env=...)`` returns the finished process with text output; it
never raises on a non-zero exit, so tests assert the exit status and both streams themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["console", "script"]


def script(name: str) -> str:
    """The path of console script ``name`` in this venv; fails (never skips) if missing."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.fail(f"{path} is not installed: run ./dev setup", pytrace=False)
    return str(path)


def console(
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str = "",
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script(name), *args], env=env, input=stdin, capture_output=True, text=True,
        timeout=timeout, check=False, cwd=cwd,
    )  # fmt: skip
