"""Starting the agent on demand, as gpg starts gpg-agent.

Rules of this module: only when nothing answers at the socket, only when
``NOMYO_AGENT_AUTOSTART`` is not ``0``/``false``/``no``/``off``, and only through
``nomyo_agent._launch.start_background``, which takes a lock so that two clients starting at once
start one agent, and returns once the agent answers. It is blocking: the async client runs it in
a worker thread.
"""

from __future__ import annotations

import os
import time

from nomyo_agent import errors as agent_errors
from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from nomyo_client._errors import AgentUnavailableError

__all__ = ["ENV_AUTOSTART", "autostart_enabled", "restart_stale", "start_agent"]

ENV_AUTOSTART = "NOMYO_AGENT_AUTOSTART"
_OFF = {"0", "false", "no", "off"}


def autostart_enabled() -> bool:
    return os.environ.get(ENV_AUTOSTART, "1").strip().lower() not in _OFF


def start_agent(path: str, timeout: float = 10.0) -> int:
    """Start an agent at ``path`` unless one answers there already; returns its pid."""
    # Imported here: _launch is only needed on the rare path where no agent answers.
    from nomyo_agent._launch import start_background  # noqa: PLC0415

    try:
        pid, _started = start_background(path, autostarted=True, timeout=timeout)
    except agent_errors.AgentError as exc:
        raise AgentUnavailableError(
            f"no agent answered at {path} and starting one failed: {exc.message}",
            hint=exc.hint or "run `nomyo-agent serve` in a terminal to see why it cannot start",
        ) from exc
    except OSError as exc:
        raise AgentUnavailableError(
            f"no agent answered at {path} and starting one failed: {exc}",
            hint="is nomyo-agent installed in this environment? try `nomyo-agent start`",
        ) from exc
    return pid


def restart_stale(path: str, timeout: float = 10.0) -> int:
    """Stop the auto-started agent at ``path`` (another protocol version), then start ours."""
    try:
        with AgentConnection.open(path, timeout=timeout) as conn:
            conn.call(p.Stop(), p.Ok)
    except agent_errors.AgentError:
        pass  # it may already be gone; what matters is that the socket stops answering
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            AgentConnection.open(path, timeout=1.0).close()
        except agent_errors.AgentUnavailableError:
            break
        except agent_errors.AgentError:
            pass
        time.sleep(0.05)
    else:
        raise AgentUnavailableError(
            f"the stale agent at {path} did not stop in {timeout:.0f} s",
            hint="stop it by hand: `nomyo-agent stop`",
        )
    return start_agent(path, timeout)
