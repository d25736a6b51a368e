"""The session's keyring for an agent started outside the desktop session (ssh, ``su -``, cron,
a script, an auto-start from such a shell): its own ``DBUS_SESSION_BUS_ADDRESS`` is missing or
names a bus with no Secret Service, while the desktop's clients name the right one.

Rules: only when a keyring call fails as unreachable and the asking client's environment names
a different session bus does the agent switch to that bus (for the keyring and everything the
process starts afterwards), log it, and retry once; if that fails too, the old bus is put back.
When the asker names no usable bus either, the error says that the agent was started outside
the session and how to restart it. The asker is a process of the same user, who could reach the
same keyring anyway: following its bus gives nothing away.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from nomyo_agent.errors import KeyringUnavailableError

if TYPE_CHECKING:
    from nomyo_agent import protocol as p
    from nomyo_agent._keystore import KeyStore

__all__ = ["OUTSIDE_HINT", "keyring_call"]

log = logging.getLogger("nomyo_agent")
T = TypeVar("T")
VAR = "DBUS_SESSION_BUS_ADDRESS"

OUTSIDE_HINT = (
    "the agent was probably started outside your desktop session (ssh, su, cron, a script); "
    "restart it from the desktop: `nomyo-agent stop`, then `nomyo-agent start` in a desktop "
    "terminal (or `nomyo-agent install-service`: the service always runs in your session)"
)


async def keyring_call(keystore: KeyStore, where: p.PinEntry | None, call: Callable[[], T]) -> T:
    """``call()`` (a keystore operation) in a thread; on an unreachable keyring, once more on
    the session bus that ``where`` names, per this module's rules."""
    try:
        return await asyncio.to_thread(call)
    except KeyringUnavailableError as exc:
        first = exc
    theirs = where.env.get(VAR) if where is not None else None
    ours = os.environ.get(VAR)
    if not theirs or theirs == ours:
        raise _outside(first, ours) from first
    keystore.use_session_bus(theirs)
    try:
        result = await asyncio.to_thread(call)
    except KeyringUnavailableError as exc:
        keystore.use_session_bus(ours)
        raise _outside(exc, theirs) from exc
    log.warning(
        "no Secret Service on the agent's own session bus (%s); using the asking client's "
        "session bus for the keyring from now on: %s",
        ours or "none",
        theirs,
    )
    return result


def _outside(exc: KeyringUnavailableError, bus: str | None) -> KeyringUnavailableError:
    where = f"on the session bus {bus}" if bus else "(the agent has no session bus)"
    return KeyringUnavailableError(
        f"{exc.message}: cannot reach a Secret Service {where}", hint=OUTSIDE_HINT
    )
