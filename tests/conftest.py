"""Shared fixtures live in tests/support/, one module per part, registered here.

Every test that starts a real part (a D-Bus session with gnome-keyring, an agent process, an X
display, a tray host, a service manager) does so through one of the fixtures named in
``REAL_PART_FIXTURES``: this module marks those tests ``real_parts`` from the fixtures they use,
so the fast lane (``./dev test-fast``, ``-m "not real_parts"``) is derived, never hand-kept.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "support.desktop",
    "support.devserver",
    "support.agent",
    "support.proxy",
    "support.x11",
    "support.client_fakes",
    "support.session",
    "support.terminal",
    "support.apps",
    "support.core",
]

# The fixtures that start something a test can only have on a real desktop or with a real
# process of ours: the desktop session (bus + Secret Service; the agent, the service manager
# and pinentry all start from it), a session without a bus or login keyring, an X display,
# and the service manager of another uid.
REAL_PART_FIXTURES = frozenset(
    {"desktop", "desktop_without_login_keyring", "no_bus_env", "xdisplay", "own_display",
     "unprivileged_manager"}
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_PART_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_parts)
