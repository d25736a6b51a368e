"""``nomyo-agent serve``: wire the real parts together and run the server until told to stop.

Order matters: fork (for ``--daemon``) before anything starts a thread; harden the process before
any key can be read; report readiness (ready pipe, sd_notify) only once connections are accepted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import sys

from nomyo_agent import _hardening, _pinentry, _systemd
from nomyo_agent._audit import AuditLog
from nomyo_agent._config import Config
from nomyo_agent._dispatch import Dispatcher
from nomyo_agent._identity import IdentityInfo
from nomyo_agent._keystore import KeyringStore
from nomyo_agent._pins import PinStore
from nomyo_agent._server import AgentServer
from nomyo_agent._services import Services
from nomyo_agent._state import AgentState, SystemClock

__all__ = ["daemonize", "serve"]

log = logging.getLogger("nomyo_agent")


def daemonize() -> None:
    """Fork once; the parent exits at once, the child leads a new session in ``/`` (it keeps no
    caller's folder busy, and nothing it resolves later is relative to one)."""
    if sys.platform == "win32":
        raise SystemExit("nomyo-agent: --daemon is for POSIX systems; on Windows use `start`")
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")


def _ready(ready_fd: int | None) -> None:
    if ready_fd is not None:
        os.write(ready_fd, f"ready {os.getpid()}\n".encode())
        os.close(ready_fd)
    _systemd.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving")


def _inherited_socket() -> socket.socket | None:
    if sys.platform == "darwin":
        from nomyo_agent import _launchd  # noqa: PLC0415 - macOS only

        return _launchd.inherited_socket()
    return _systemd.inherited_socket()


def serve(
    config: Config, socket_path: str, *, ready_fd: int | None = None, autostarted: bool = False
) -> int:
    for warning in _hardening.harden_process():
        log.warning("%s", warning)
    info = IdentityInfo.load(config.state_dir / "identity.json")
    state = AgentState(
        clock=SystemClock(),
        idle_timeout=config.idle_timeout,
        max_lifetime=config.max_lifetime,
        info=info,
        autostarted=autostarted,
    )
    inherited = _inherited_socket()
    if inherited is not None and inherited.getsockname():
        socket_path = inherited.getsockname()  # activated: report where clients really reach us
    audit = AuditLog(config.state_dir / "audit.log")
    state.watchers.add(lambda event: audit.record(event, state.clock.wall()))
    state.on_first_use.append(lambda app: audit.record_app(app, state.clock.wall()))
    services = Services(
        config=config,
        keystore=KeyringStore(service=config.keyring_service),
        pins=PinStore(config.state_dir / "pins.json"),
        socket_path=socket_path,
        ask_passphrase=functools.partial(
            _pinentry.get_passphrase, config.pinentry or _pinentry.default_program()
        ),
        hardening=_hardening.report,
    )
    server = AgentServer(
        Dispatcher(state, services),
        state,
        path=socket_path,
        sock=inherited,
        on_ready=functools.partial(_ready, ready_fd),
    )
    asyncio.run(server.run())
    return 0
