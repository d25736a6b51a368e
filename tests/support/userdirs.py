"""Make this test process a given user for ``paths.user_dirs``: platformdirs reads only
``os.environ``, so a test chooses the user's folders by setting ``HOME`` and the ``XDG_*``
variables (and nothing else of theirs leaks in from the machine's session).

Example::

    as_user(monkeypatch, {"HOME": "/home/ada", "XDG_STATE_HOME": "/st"})
    user_dirs("linux").state  # Path('/st/nomyo-agent')
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

__all__ = ["as_user"]


def as_user(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    """Give this process ``env``'s ``HOME`` and ``XDG_*`` variables, dropping any others."""
    for var in list(os.environ):
        if var.startswith("XDG_"):
            monkeypatch.delenv(var)
    for var, value in env.items():
        if var == "HOME" or var.startswith("XDG_"):
            monkeypatch.setenv(var, value)
