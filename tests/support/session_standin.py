"""Stand-ins for the desktop session's D-Bus services, run as a process by ``support.session``.

It owns ``org.freedesktop.login1`` on the (stand-in) system bus and ``org.freedesktop.ScreenSaver``
and ``org.gnome.ScreenSaver`` on the session bus, answers the logind calls the agent makes
(``ListSessions``, ``Inhibit``) with the real signatures, and emits the real signals on command.

Commands, one per line on stdin::

    sleep 1|0        PrepareForSleep(b) on org.freedesktop.login1.Manager
    lock             Lock() on org.freedesktop.login1.Session at our session's path
    hint 1|0         PropertiesChanged(sa{sv}as) for LockedHint on that session
    remove           SessionRemoved(so) for our session
    foreign-lock     Lock() on another user's session
    rogue-sleep      PrepareForSleep(true), broadcast by a connection that is not logind
    rogue-lock       Lock() on our session, broadcast by a connection that is not logind
    screensaver 1|0  ActiveChanged(b) on org.freedesktop.ScreenSaver
    gnome 1|0        ActiveChanged(b) on org.gnome.ScreenSaver

Reports, one per line on stdout: ``ready``; ``inhibit WHAT WHO MODE`` when a delay inhibitor is
taken; ``released`` when its file descriptor is closed by every holder (logind's rule);
``sent CMD`` after each signal went out.
"""

from __future__ import annotations

import os
import select
import sys
import threading

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_return, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
from jeepney.wrappers import new_error

LOGIN1 = "org.freedesktop.login1"
MANAGER_PATH = "/org/freedesktop/login1"
SESSION_PATH = "/org/freedesktop/login1/session/c1"
FOREIGN_PATH = "/org/freedesktop/login1/session/c9"

_out_lock = threading.Lock()


def report(line: str) -> None:
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _claim(conn: object, name: str) -> None:
    reply = conn.send_and_get_reply(message_bus.RequestName(name), timeout=5)  # type: ignore[attr-defined]
    if reply.body[0] != 1:
        raise SystemExit(f"could not own {name}: {reply.body}")


def _watch_release(read_fd: int) -> None:
    """logind's rule: the inhibitor lasts until every copy of the fd is closed (EOF here)."""
    select.select([read_fd], [], [])
    os.read(read_fd, 1)
    os.close(read_fd)
    report("released")


def serve_system(conn: object, send_lock: threading.Lock) -> None:
    while True:
        msg = conn.receive()  # type: ignore[attr-defined]
        if msg.header.message_type is not MessageType.method_call:
            continue
        member = msg.header.fields.get(HeaderFields.member)
        if member == "ListSessions":
            sessions = [
                ("c1", os.getuid(), "user", "seat0", SESSION_PATH),
                ("c9", os.getuid() + 1, "other", "seat0", FOREIGN_PATH),
            ]
            reply = new_method_return(msg, "a(susso)", (sessions,))
        elif member == "Inhibit":
            what, who, _why, mode = msg.body
            read_fd, write_fd = os.pipe()
            reply = new_method_return(msg, "h", (write_fd,))
            with send_lock:
                conn.send(reply)  # type: ignore[attr-defined]
            os.close(write_fd)  # the caller now holds the only copy
            threading.Thread(target=_watch_release, args=(read_fd,), daemon=True).start()
            report(f"inhibit {what} {who} {mode}")
            continue
        else:
            reply = new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (member,))
        with send_lock:
            conn.send(reply)  # type: ignore[attr-defined]


def main() -> None:
    system = open_dbus_connection("SYSTEM", enable_fds=True)
    session = open_dbus_connection("SESSION")
    rogue = open_dbus_connection("SYSTEM")  # any other user's program on the system bus
    _claim(system, LOGIN1)
    _claim(session, "org.freedesktop.ScreenSaver")
    _claim(session, "org.gnome.ScreenSaver")
    send_lock = threading.Lock()
    threading.Thread(target=serve_system, args=(system, send_lock), daemon=True).start()
    manager = DBusAddress(MANAGER_PATH, interface="org.freedesktop.login1.Manager")
    ours = DBusAddress(SESSION_PATH, interface="org.freedesktop.login1.Session")
    foreign = DBusAddress(FOREIGN_PATH, interface="org.freedesktop.login1.Session")
    props = DBusAddress(SESSION_PATH, interface="org.freedesktop.DBus.Properties")
    fdo_saver = DBusAddress("/org/freedesktop/ScreenSaver", interface="org.freedesktop.ScreenSaver")
    gnome_saver = DBusAddress("/org/gnome/ScreenSaver", interface="org.gnome.ScreenSaver")
    report("ready")
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        flag = arg == "1"
        if cmd == "sleep":
            bus, msg = system, new_signal(manager, "PrepareForSleep", "b", (flag,))
        elif cmd == "lock":
            bus, msg = system, new_signal(ours, "Lock")
        elif cmd == "rogue-sleep":
            bus, msg = rogue, new_signal(manager, "PrepareForSleep", "b", (True,))
        elif cmd == "rogue-lock":
            bus, msg = rogue, new_signal(ours, "Lock")
        elif cmd == "foreign-lock":
            bus, msg = system, new_signal(foreign, "Lock")
        elif cmd == "hint":
            changed = {"LockedHint": ("b", flag)}
            body = ("org.freedesktop.login1.Session", changed, [])
            bus, msg = system, new_signal(props, "PropertiesChanged", "sa{sv}as", body)
        elif cmd == "remove":
            bus, msg = system, new_signal(manager, "SessionRemoved", "so", ("c1", SESSION_PATH))
        elif cmd == "screensaver":
            bus, msg = session, new_signal(fdo_saver, "ActiveChanged", "b", (flag,))
        elif cmd == "gnome":
            bus, msg = session, new_signal(gnome_saver, "ActiveChanged", "b", (flag,))
        else:
            report(f"unknown {cmd}")
            continue
        with send_lock:
            bus.send(msg)
        report(f"sent {line.strip()}")


if __name__ == "__main__":
    main()
