"""``nomyo-agent serve``, ``start``, ``stop``, ``install-service``, ``uninstall-service``: the
agent process itself. The daemon's own modules (and ``cryptography`` behind them) are imported
only by the command that runs it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from nomyo_agent import protocol as p
from nomyo_agent._cli_common import EXIT_OK, connect, say
from nomyo_agent.errors import AgentUnavailableError
from nomyo_agent.paths import socket_path

__all__ = ["cmd_install_service", "cmd_serve", "cmd_start", "cmd_stop", "cmd_uninstall_service"]


def _set_title(path: str | None) -> None:
    """``nomyo-agent serve --socket PATH`` in ps, ``nomyo-agent`` as the name pgrep matches."""
    # SPT_NOENV: write the title over argv only, never over the environment block, so that
    # /proc/PID/environ stays true (the title is cut to argv's length instead). Read once, at
    # the first call; not left for the children (pinentry, the key worker) to inherit.
    os.environ["SPT_NOENV"] = "1"
    try:
        import setproctitle  # noqa: PLC0415 - the daemon only

        setproctitle.setproctitle(f"nomyo-agent serve --socket {socket_path(path)}")
    finally:
        del os.environ["SPT_NOENV"]
    setproctitle.setthreadtitle("nomyo-agent")  # /proc/PID/comm: `pgrep -x nomyo-agent`


def cmd_serve(args: argparse.Namespace) -> int:
    from nomyo_agent import _daemon  # noqa: PLC0415 - imports cryptography; only the daemon needs it
    from nomyo_agent._config import Config, load_config  # noqa: PLC0415

    path = socket_path(args.socket)
    _set_title(args.socket)
    if args.daemon:
        path = os.path.abspath(path)  # the daemon runs in /
        _daemon.daemonize()
    import logging  # noqa: PLC0415

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="nomyo-agent[%(process)d]: %(levelname)s: %(message)s",
    )

    def configure() -> Config:
        # The file, then the flags: the flags still win when SIGHUP re-reads the file.
        return load_config().replace(
            idle_timeout=args.idle_timeout,
            max_lifetime=args.max_lifetime,
            pin_policy=args.pin_policy,
            pinentry=args.pinentry,
            keystore=args.keystore,
        )

    return _daemon.serve(
        configure(),
        path,
        ready_fd=args.ready_fd,
        autostarted=args.autostarted,
        reload=configure,
    )


def cmd_start(args: argparse.Namespace) -> int:
    from nomyo_agent._launch import start_background  # noqa: PLC0415

    extra: list[str] = []
    for flag, value in (
        ("--idle-timeout", args.idle_timeout),
        ("--max-lifetime", args.max_lifetime),
        ("--pinentry", args.pinentry),
        ("--keystore", args.keystore),
    ):
        if value is not None:
            extra += [flag, str(value)]
    path = socket_path(args.socket)
    pid, started = start_background(path, extra_args=extra)
    quoted = shlex.quote(path)
    if args.csh:
        print(f"setenv NOMYO_AGENT_SOCK {quoted};")
    else:
        print(f"NOMYO_AGENT_SOCK={quoted}; export NOMYO_AGENT_SOCK;")
    if not args.quiet:
        print(f"echo {'Agent' if started else 'Agent already running,'} pid {pid};")
    return EXIT_OK


def cmd_install_service(args: argparse.Namespace) -> int:
    from nomyo_agent import _service  # noqa: PLC0415

    # Only an explicit --socket: a NOMYO_AGENT_SOCK left in the shell must not be baked in.
    return _service.install(
        print_only=args.print,
        start=not args.no_start,
        socket=args.socket,
        proxy=args.proxy,
        out=sys.stdout,
    )


def cmd_uninstall_service(args: argparse.Namespace) -> int:
    from nomyo_agent import _service  # noqa: PLC0415

    return _service.uninstall(out=sys.stdout)


def cmd_stop(args: argparse.Namespace) -> int:
    try:
        conn = connect(args)
    except AgentUnavailableError as exc:
        # "start it" is the wrong advice to someone who wants it gone.
        exc.hint = (
            "nothing to stop; if an agent runs elsewhere, name its socket with --socket "
            "or NOMYO_AGENT_SOCK"
        )
        raise
    with conn:
        pid = conn.call(p.Hello(client="nomyo-agent stop"), p.HelloReply).pid
        conn.call(p.Stop(), p.Ok)
    say(f"stopped the agent (pid {pid})")
    return EXIT_OK
