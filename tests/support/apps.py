"""An app that uses the identity through the real client library: a script that seals one
request with ``AgentLink.seal`` and prints ``SEALED`` or ``FAILED <exception> <message>``.

``sealing_app(agent, name="app.py")`` is the shell command that runs it against ``agent``; each
``name`` is a separate script file, hence a separate app to the agent's approvals. The result
also goes to ``<name>.out`` beside the script (``sealing_app.result(name)``), where no pinentry
can draw over it.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from support.agent import RunningAgent
from support.keys import rsa_key

APP = """
import asyncio, sys
from nomyo_client._agent import AgentLink

async def main():
    link = AgentLink(sys.argv[1], autostart=False)
    try:
        await link.seal("https://router.example", open(sys.argv[2]).read(), b"{}")
        result = "SEALED"
    except Exception as exc:
        result = f"FAILED {type(exc).__name__} {exc}"
    finally:
        await link.aclose()
    print(result)
    # Also to a file: a terminal pinentry may still redraw the line the result landed on.
    with open(sys.argv[3], "w") as out:
        out.write(result)

asyncio.run(main())
"""


def router_pem() -> str:
    """A router public key (PEM) to seal to."""
    key = rsa_key(2048, 1).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture
def sealing_app(tmp_path: Path) -> Callable[..., str]:
    router = tmp_path / "router.pem"
    router.write_text(router_pem())

    def command(agent: RunningAgent, name: str = "app.py") -> str:
        script = tmp_path / name
        script.write_text(APP)
        out = tmp_path / f"{name}.out"
        return shlex.join([sys.executable, str(script), agent.path, str(router), str(out)])

    def result(name: str = "app.py") -> str:
        return (tmp_path / f"{name}.out").read_text()

    command.result = result  # type: ignore[attr-defined]
    return command
