"""The exception trees drawn in the error modules' docstrings are the trees in the code.

A class that raises outside its package's drawn tree, or a drawing that lost a class, fails here:
users read the drawing to know what to catch.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import nomyo_agent
import nomyo_client
from nomyo_agent import errors as agent_errors

_BRANCH = re.compile(r"^(?P<indent>[ │]*)[├└]── (?P<name>\w+)")


def drawn_tree(module: ModuleType) -> dict[str, str | None]:
    """Each drawn class name mapped to its drawn parent (None for the root)."""
    lines = (module.__doc__ or "").split("::", 1)[1].splitlines()
    tree: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        if not line.strip():
            if tree:
                break
            continue
        m = _BRANCH.match(line[4:])
        if m is None:
            if not tree:  # the root; later lines without a branch continue a description
                root = line.split()[0]
                tree[root] = None
                stack = [(-1, root)]
            continue
        depth = len(m.group("indent"))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        tree[m.group("name")] = stack[-1][1]
        stack.append((depth, m.group("name")))
    return tree


def package_exceptions(package: ModuleType, base: type[Exception]) -> dict[str, str | None]:
    """Every exception class defined in ``package`` under ``base``, with its parent in the tree."""
    found: dict[str, str | None] = {}
    names = [package.__name__] + [
        info.name
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not info.name.endswith(("_winpipe", "__main__"))
    ]
    for name in names:
        for cls_name, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if issubclass(cls, base) and cls.__module__.startswith(package.__name__):
                parents = [b for b in cls.__mro__[1:] if issubclass(b, base)]
                found[cls_name] = parents[0].__name__ if parents else None
    return found


@pytest.mark.parametrize(
    ("package", "errors_module"),
    [(nomyo_agent, "nomyo_agent.errors"), (nomyo_client, "nomyo_client._errors")],
)
def test_drawn_tree_is_the_code(package: ModuleType, errors_module: str) -> None:
    module = importlib.import_module(errors_module)
    drawn = drawn_tree(module)
    root = next(name for name, parent in drawn.items() if parent is None)
    base = getattr(module, root)
    assert package_exceptions(package, base) == drawn


def test_every_agent_error_has_its_own_code() -> None:
    classes = [
        cls
        for cls in vars(agent_errors).values()
        if inspect.isclass(cls) and issubclass(cls, agent_errors.AgentError)
        and cls is not agent_errors.AgentError
    ]  # fmt: skip
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), codes


def test_no_base_class_is_raised_as_a_concrete_error() -> None:
    # `raise AgentError(...)` says nothing a caller can catch apart: each raise names its class.
    roots = Path(nomyo_agent.__file__).parents[2]
    bases = {"AgentError", "APIError", "ProxyError"}
    found = []
    for path in roots.glob("*/nomyo_*/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in bases:
                    found.append(f"{path.relative_to(roots)}:{node.lineno}")
    assert found == []
