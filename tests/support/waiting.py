"""Waiting for a condition in tests: poll, with a bound, and fail the test with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

__all__ = ["wait_until"]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` every 50 ms until it is true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
