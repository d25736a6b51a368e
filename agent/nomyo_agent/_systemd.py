"""systemd's side of the agent's life: socket activation and readiness notification.

Both are no-ops without systemd (or ``systemd-socket-activate``), so ``serve`` calls them always.
The protocol is environment variables, inherited fds and a datagram: the standard library
suffices.
"""

from __future__ import annotations

import os
import socket

from nomyo_agent._units import SOCKET_NAME
from nomyo_agent.errors import StartFailedError

__all__ = ["SD_LISTEN_FDS_START", "inherited_socket", "notify"]

SD_LISTEN_FDS_START = 3


def inherited_socket(
    env: dict[str, str] | None = None, name: str = SOCKET_NAME
) -> socket.socket | None:
    """The listening socket passed by the service manager, if it passed one to this process.

    Follows sd_listen_fds(3): ``LISTEN_PID`` must be ours, ``LISTEN_FDS`` counts the fds from 3;
    with several, the one named ``name`` in ``LISTEN_FDNAMES`` wins, else the first. The
    variables are removed so that children do not believe they were activated too.

    Raises ``StartFailedError`` when the passed fd is not a listening stream socket (a unit with
    ``ListenDatagram=`` or ``Accept=yes``): serving on it would fail later, less clearly.
    """
    environ = os.environ if env is None else env
    try:
        pid = int(environ.get("LISTEN_PID", ""))
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return None
    if pid != os.getpid() or count < 1:
        return None
    # Only the first ``count`` names describe passed fds: a longer list (a stale or forged
    # variable) must not point us at an fd of our own that the manager never passed.
    names = environ.get("LISTEN_FDNAMES", "").split(":")[:count]
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(var, None)
    index = names.index(name) if name in names else 0
    fd = SD_LISTEN_FDS_START + index
    for other in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        if other != fd:
            os.close(other)
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.close()
        raise StartFailedError(
            f"fd {fd} passed by the service manager is not a listening stream socket",
            "the .socket unit must use ListenStream= without Accept=yes",
        )
    sock.setblocking(False)
    return sock


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send ``message`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to ``NOTIFY_SOCKET``."""
    environ = os.environ if env is None else env
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    # Python's sockets are close-on-exec already (PEP 446); SOCK_CLOEXEC is Linux-only anyway.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True
