"""``nomyo-agent serve``: wire the real parts together and run the server until told to stop.

Order matters: fork (for ``--daemon``) before anything starts a thread; harden the process before
any key can be read; report readiness (ready pipe, sd_notify) only once connections are accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import socket
import sys
from collections.abc import Callable

from nomyo_agent import _hardening, _libc, _pinentry, _systemd
from nomyo_agent._audit import AuditLog
from nomyo_agent._config import Config, config_path
from nomyo_agent._dispatch import Dispatcher
from nomyo_agent._identity import IdentityInfo
from nomyo_agent._keystore import FILE_NAME, FileStore, KeyringStore, KeyStore
from nomyo_agent._pins import PinStore
from nomyo_agent._server import AgentServer
from nomyo_agent._services import Services
from nomyo_agent._session import SessionWatch
from nomyo_agent._state import AgentState, SystemClock
from nomyo_agent.errors import ConfigError

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


def _reloader(
    reload: Callable[[], Config], state: AgentState, services: Services, server: AgentServer
) -> Callable[[], None]:
    """SIGHUP: read the settings again; a refused file keeps the old settings (both logged)."""

    def on_sighup() -> None:
        path = config_path()
        try:
            new = reload()
        except ConfigError as exc:
            log.warning("SIGHUP: refused the new settings, kept the old ones: %s", exc.message)
            return
        old = services.config
        fixed = [k for k in _RESTART_ONLY if getattr(new, k) != getattr(old, k)]
        if fixed:
            log.warning(
                "SIGHUP: %s take effect only after a restart; kept the old value(s)",
                ", ".join(fixed),
            )
            new = dataclasses.replace(new, **{k: getattr(old, k) for k in fixed})
        services.config = new
        services.ask_passphrase = functools.partial(
            _pinentry.get_passphrase, new.pinentry or _pinentry.default_program()
        )
        services.confirm = functools.partial(
            _pinentry.confirm, new.pinentry or _pinentry.default_program()
        )
        state.set_timeouts(new.idle_timeout, new.max_lifetime)
        server.connection_timeout = new.connection_timeout
        changed = [
            f"{f.name}={getattr(new, f.name)!r}"
            for f in dataclasses.fields(new)
            if getattr(new, f.name) != getattr(old, f.name)
        ]
        log.info("SIGHUP: reloaded %s (%s)", path, ", ".join(changed) or "no changes")

    return on_sighup


# Where the identity lives: changing them under a running agent would strand its key.
_RESTART_ONLY = ("keyring_service", "keystore", "state_dir", "lock_on")  # lock_on: the watch


def _keystore(config: Config) -> KeyStore:
    if config.keystore == "file":
        return FileStore(config.state_dir / FILE_NAME)
    return KeyringStore(service=config.keyring_service)


def serve(
    config: Config,
    socket_path: str,
    *,
    ready_fd: int | None = None,
    autostarted: bool = False,
    reload: Callable[[], Config] | None = None,
) -> int:
    # Before any worker thread exists: seals and opens of large payloads run on workers.
    _libc.return_large_buffers()
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
    session = SessionWatch(state, config.lock_on)
    services = Services(
        config=config,
        keystore=_keystore(config),
        pins=PinStore(config.state_dir / "pins.json"),
        socket_path=socket_path,
        ask_passphrase=functools.partial(
            _pinentry.get_passphrase, config.pinentry or _pinentry.default_program()
        ),
        hardening=_hardening.report,
        session_report=session.report,
        confirm=functools.partial(
            _pinentry.confirm, config.pinentry or _pinentry.default_program()
        ),
    )
    server = AgentServer(
        Dispatcher(state, services),
        state,
        path=socket_path,
        sock=inherited,
        on_ready=functools.partial(_ready, ready_fd),
        connection_timeout=config.connection_timeout,
        companions=[session.run],
    )
    if reload is not None:
        server.on_reload = _reloader(reload, state, services, server)
    asyncio.run(server.run())
    return 0
