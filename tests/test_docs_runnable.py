"""The docs check: every command block of README.md and docs/*.md marked runnable is run, so a
false example fails CI.

A block is marked by an HTML comment on the line just before its fence (invisible on GitHub)::

    <!-- runnable -->            run against a throwaway agent (with an identity) and devserver
    <!-- runnable: headless -->  run on an account with no Secret Service and no agent yet,
                                 with a devserver; NOMYO_PASSPHRASE is set

The block runs under ``bash -euo pipefail`` with the venv's console scripts first on ``PATH``,
``NOMYO_BASE_URL`` pointing at the devserver, in a fresh private ``HOME``; it passes when it
exits 0. Agents a block starts itself are stopped afterwards.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.agent import RunningAgent
from support.devserver import RunningDevServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!-- runnable(?::\s*(?P<kind>[a-z-]+))? -->\s*$")
KINDS = ("devserver", "headless")
SHELLS = ("sh", "bash", "shell")
BLOCK_TIMEOUT = 180.0


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    kind: str
    code: str


def find_blocks(text: str, name: str) -> list[Block]:
    """The marked blocks of one page; a mark not followed by a shell fence is an error."""
    lines = text.splitlines()
    blocks = []
    for number, line in enumerate(lines):
        mark = MARK.match(line)
        if mark is None:
            continue
        kind = mark.group("kind") or "devserver"
        fence = lines[number + 1] if number + 1 < len(lines) else ""
        if kind not in KINDS or fence.removeprefix("```") not in SHELLS:
            raise AssertionError(
                f"{name}:{number + 1}: a runnable mark needs a kind in {KINDS} and a ```sh fence "
                f"on the next line, not {fence!r}"
            )
        body = []
        for code in lines[number + 2 :]:
            if code.startswith("```"):
                break
            body.append(code)
        else:
            raise AssertionError(f"{name}:{number + 2}: the runnable block is not closed")
        blocks.append(Block(name, number + 3, kind, "\n".join(body) + "\n"))
    return blocks


BLOCKS = [b for page in PAGES for b in find_blocks(page.read_text(), str(page.relative_to(ROOT)))]


def run_block(block: Block, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"}
    try:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            env=env, cwd=cwd, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False,
        )  # fmt: skip
    finally:
        # An agent the block started itself (eval "$(nomyo-agent start)") must not outlive it.
        if block.kind == "headless":
            subprocess.run(
                [str(Path(sys.executable).with_name("nomyo-agent")), "stop"],
                env=env, capture_output=True, timeout=30, check=False,
            )  # fmt: skip


@pytest.fixture
def block_env(
    request: pytest.FixtureRequest,
    make_agent: Callable[..., RunningAgent],
    no_bus_env: dict[str, str],
    devserver: RunningDevServer,
) -> dict[str, str]:
    kind = request.param
    if kind == "headless":
        return {**no_bus_env, "NOMYO_BASE_URL": devserver.url,
                "NOMYO_PASSPHRASE": "docs check passphrase"}  # fmt: skip
    agent = make_agent()
    agent.keygen()
    return {
        **agent.env, "NOMYO_AGENT_SOCK": agent.path, "NOMYO_BASE_URL": devserver.url,
        "NOMYO_AGENT_AUTOSTART": "0",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("block", "block_env"),
    [pytest.param(b, b.kind, id=f"{b.page}:{b.line}") for b in BLOCKS],
    indirect=["block_env"],
)
def test_runnable_block(block: Block, block_env: dict[str, str], tmp_path: Path) -> None:
    result = run_block(block, block_env, tmp_path)
    assert result.returncode == 0, (
        f"{block.page}:{block.line} exited {result.returncode}\n--- block\n{block.code}"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )


def test_the_pages_users_read_first_have_runnable_blocks() -> None:
    pages = {block.page for block in BLOCKS}
    assert {"README.md", "docs/devserver.md", "docs/running.md"} <= pages
    assert {block.kind for block in BLOCKS} == set(KINDS)


@pytest.mark.parametrize("block_env", ["devserver"], indirect=True)
def test_a_false_example_fails_the_check(block_env: dict[str, str], tmp_path: Path) -> None:
    """The example docs/devserver.md had before (no -m): the check must catch such a block."""
    false = Block("docs/devserver.md", 0, "devserver",
                  'nomyo-chat --base-url "$NOMYO_BASE_URL" --allow-http "hi"\n')  # fmt: skip
    result = run_block(false, block_env, tmp_path)
    assert result.returncode == 2
    assert "no model" in result.stderr


def test_a_mark_without_a_shell_fence_is_an_error() -> None:
    with pytest.raises(AssertionError, match="a runnable mark needs a kind"):
        find_blocks("<!-- runnable: nowhere -->\n```sh\ntrue\n```\n", "page.md")
    with pytest.raises(AssertionError, match="a runnable mark needs a kind"):
        find_blocks("<!-- runnable -->\n```python\nprint()\n```\n", "page.md")
