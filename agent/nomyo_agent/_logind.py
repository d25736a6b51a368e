"""What the session watch asks of D-Bus: its match rules, logind's sessions, the sleep inhibitor.

Linux only; jeepney is imported inside each function, when the watch starts, so importing this
module costs nothing elsewhere. ``_session`` decides when to call these, ``_session_policy`` what
the signals mean.

Rules: every call is bounded by ``CALL_TIMEOUT``; the system bus's rules name logind as the sender,
and all ask only for the signals ``classify`` reads, so no bus wakes the agent for the rest.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from nomyo_agent._session_policy import LOGIN1, MANAGER, PROPS, SAVERS, SESSION

__all__ = ["CALL_TIMEOUT", "LOGIN1", "match_rules", "our_sessions", "take_inhibitor"]

CALL_TIMEOUT = 5.0


def match_rules(lock_on: frozenset[str], bus: str) -> list[Any]:
    from jeepney import MatchRule  # noqa: PLC0415 - Linux only, imported when watching starts

    rules = []
    if bus == "SYSTEM":
        if "suspend" in lock_on:
            rules.append(
                MatchRule(type="signal", sender=LOGIN1, interface=MANAGER, member="PrepareForSleep")
            )
        if "screen" in lock_on:
            props = MatchRule(
                type="signal", sender=LOGIN1, interface=PROPS, member="PropertiesChanged"
            )
            props.add_arg_condition(0, SESSION)  # only the sessions' properties, not all
            rules += [
                MatchRule(type="signal", sender=LOGIN1, interface=MANAGER, member="SessionRemoved"),
                MatchRule(type="signal", sender=LOGIN1, interface=MANAGER, member="SessionNew"),
                MatchRule(type="signal", sender=LOGIN1, interface=SESSION, member="Lock"),
                props,
            ]
    elif "screen" in lock_on:
        rules += [MatchRule(type="signal", interface=i, member="ActiveChanged") for i in SAVERS]
    return rules


def take_inhibitor() -> int:
    """A logind ``delay`` inhibitor for sleep: the fd that holds it (blocking; run in a thread).

    jeepney's asyncio connection cannot receive file descriptors, so this one call uses a
    short-lived blocking connection; the inhibitor belongs to the fd, not to the connection.
    """
    from jeepney import DBusAddress, new_method_call  # noqa: PLC0415
    from jeepney.io.blocking import open_dbus_connection  # noqa: PLC0415
    from jeepney.wrappers import unwrap_msg  # noqa: PLC0415

    manager = DBusAddress("/org/freedesktop/login1", bus_name=LOGIN1, interface=MANAGER)
    call = new_method_call(
        manager,
        "Inhibit",
        "ssss",
        ("sleep", "nomyo-agent", "drop the identity's key from memory before sleep", "delay"),
    )
    with open_dbus_connection("SYSTEM", enable_fds=True) as conn:
        reply = conn.send_and_get_reply(call, timeout=CALL_TIMEOUT)
    (fd,) = unwrap_msg(reply)
    return int(fd.to_raw_fd())


async def our_sessions(router: Any) -> frozenset[str]:
    from jeepney import DBusAddress, new_method_call  # noqa: PLC0415
    from jeepney.wrappers import unwrap_msg  # noqa: PLC0415

    manager = DBusAddress("/org/freedesktop/login1", bus_name=LOGIN1, interface=MANAGER)
    async with asyncio.timeout(CALL_TIMEOUT):
        reply = await router.send_and_get_reply(new_method_call(manager, "ListSessions"))
    (sessions,) = unwrap_msg(reply)
    uid = os.getuid()
    return frozenset(str(s[4]) for s in sessions if s[1] == uid)
