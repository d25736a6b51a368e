"""Shared fixtures live in tests/support/, one module per part, registered here."""

pytest_plugins = [
    "support.desktop",
    "support.devserver",
    "support.agent",
    "support.proxy",
    "support.x11",
]
