"""The ``>>>`` examples in module docstrings run, so that an example cannot drift from the code.

Examples that need a real part (a keyring, a stored key) are literal blocks (``::``, no ``>>>``)
instead; ``test_no_other_module_has_interactive_examples`` keeps that split honest.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import nomyo_agent
import nomyo_client
import nomyo_devserver

RUNNABLE = [
    "nomyo_agent.protocol",
    "nomyo_agent._envelope",
    "nomyo_agent.package",
    "nomyo_agent._secret",
    "nomyo_agent.origins",
    "nomyo_agent._assuan",
]


@pytest.mark.parametrize("name", RUNNABLE)
def test_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no example left"
    assert result.failed == 0


def _modules(package: ModuleType) -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not info.name.endswith(("_winpipe", "__main__"))
    ]


def test_no_other_module_has_interactive_examples() -> None:
    finder = doctest.DocTestFinder()
    with_examples = {
        name
        for package in (nomyo_agent, nomyo_client, nomyo_devserver)
        for name in _modules(package)
        if any(t.examples for t in finder.find(importlib.import_module(name)))
    }
    assert with_examples == set(RUNNABLE)
