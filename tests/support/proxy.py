"""A real ``nomyo-proxy serve`` process in front of a real agent and router.

``make_proxy(agent, router, *args, env=...)`` starts the installed console script (so the agent sees
the peer as ``nomyo-proxy``, as users' agents do) in the agent's desktop session, waits for its
``NOMYO_PROXY_URL=`` line and stops it (SIGTERM, then SIGKILL) after the test. Each
``RunningProxy`` has ``.url`` (the OpenAI base URL, ``.../v1``), ``.token(name)`` (runs
``nomyo-proxy token create``), ``.cli(...)`` and ``.log()``. ``start_proxy_process`` runs one
that may refuse to start and returns its exit status and stderr.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.agent import RunningAgent
from support.desktop import stop_group
from support.devserver import RunningDevServer

__all__ = ["PROXY", "RunningProxy", "proxy_cli"]

PROXY = str(Path(sys.executable).parent / "nomyo-proxy")
START_TIMEOUT = 20.0


def proxy_cli(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``nomyo-proxy ARGS`` in ``env``; ``check`` fails the test on a non-zero exit."""
    done = subprocess.run(
        [PROXY, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"nomyo-proxy {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


@dataclass
class RunningProxy:
    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def token(self, name: str) -> str:
        out = proxy_cli(self.env, "token", "create", name).stdout
        assert out.count("\n") == 1, out  # the token alone, on one line
        return out.strip()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return proxy_cli(self.env, *args, check=check)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_group(self.process)


def start_proxy(folder: Path, env: dict[str, str], args: Sequence[str]) -> RunningProxy:
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    with out.open("wb") as out_fh, err.open("wb") as err_fh:
        process = subprocess.Popen(
            [PROXY, "serve", *args], env=env, stdout=out_fh, stderr=err_fh,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    proxy = RunningProxy(url="", env=env, process=process, stderr_path=err)
    deadline = time.monotonic() + START_TIMEOUT
    while not proxy.url:
        line = out.read_text().partition("\n")[0] if out.read_text().endswith("\n") else ""
        if line.startswith("NOMYO_PROXY_URL="):
            proxy.url = line.split("=", 1)[1]
        elif process.poll() is not None or time.monotonic() > deadline:
            proxy.stop()
            pytest.fail(f"nomyo-proxy did not start ({process.returncode}):\n{proxy.log()}")
        else:
            time.sleep(0.02)
    return proxy


def proxy_env(agent: RunningAgent) -> dict[str, str]:
    env = dict(agent.env)
    env["NOMYO_AGENT_SOCK"] = agent.path
    env["NOMYO_AGENT_AUTOSTART"] = "0"
    env.pop("NOMYO_API_KEY", None)
    return env


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def make(
        agent: RunningAgent,
        router: RunningDevServer | str,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> RunningProxy:
        env = {**proxy_env(agent), **(env or {})}
        where = [] if {"--listen", "--unix"} & set(args) else ["--listen", "127.0.0.1:0"]
        url = router if isinstance(router, str) else router.url
        argv = [*where, "--router", url, "--allow-http", *args]
        proxy = start_proxy(tmp_path / f"proxy-{len(started)}", env, argv)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
