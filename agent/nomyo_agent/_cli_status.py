"""``nomyo-agent status``, ``pins``, ``apps``: what the agent reports and what it keeps about
routers and apps, as text for people or JSON for scripts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import msgspec

from nomyo_agent import protocol as p
from nomyo_agent._cli_common import EXIT_OK, call, say

__all__ = ["cmd_apps", "cmd_pins", "cmd_status", "status_text"]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "off"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def _recent_apps(clients: Sequence[p.ClientInfo]) -> str:
    """``nomyo-chat (3), myapp``: each app once, most recent first, with its process count."""
    counts: dict[str, int] = {}
    for client in clients:
        counts[client.exe] = counts.get(client.exe, 0) + 1
    return ", ".join(f"{exe} ({n})" if n > 1 else exe for exe, n in counts.items()) or "none"


def status_text(st: p.StatusReply) -> str:
    short = p.short_fingerprint(st.fingerprint) if st.fingerprint else ""
    state = st.state.value
    if st.state is p.State.UNLOCKED:
        state += (
            f" (idle lock in {_duration(st.idle_left)},"
            f" lifetime lock in {_duration(st.lifetime_left)})"
        )
    if st.state is p.State.LOCKED and st.locked_by:
        state += f" (by {st.locked_by.replace('_', ' ')})"
    lines = [f"state:        {state}"]
    if st.fingerprint:
        protected = "passphrase-protected" if st.passphrase_protected else "no passphrase"
        lines += [
            f"identity:     RSA-{st.bits} {short} ({protected})",
            f"fingerprint:  {st.fingerprint}",
        ]
    recent = _recent_apps(st.recent_clients)
    h = st.hardening
    yes = {True: "yes", False: "NO"}
    c = st.counters
    lines += [
        f"keyring:      {st.keyring_backend}",
        f"router pins:  {st.pin_policy}",
        f"timeouts:     idle {_duration(st.idle_timeout or None)},"
        f" lifetime {_duration(st.max_lifetime or None)}",
        f"agent:        pid {st.pid}, version {st.agent_version}, protocol {st.protocol},"
        f" up {_duration(st.uptime)}",
        f"socket:       {st.socket}",
        *(f"{'session:' if i == 0 else '':14}{line}" for i, line in enumerate(st.session)),
        f"served:       {st.served_since_unlock} requests since unlock; recent apps: {recent}",
        f"hardening:    not dumpable {yes[h.not_dumpable]},"
        f" no core dumps {yes[h.core_dumps_disabled]}, "
        f"ptrace denied {yes[h.ptrace_denied]}, key memory locked {yes[h.key_memory_locked]}, "
        f"process memory locked {yes[h.process_memory_locked]}",
        *(f"              {d}" for d in h.details),
        f"counters:     {c.connections} connections, {c.requests} requests, {c.seals} seals, "
        f"{c.opens} opens, {c.errors} errors, {c.rejected_peers} rejected peers, "
        f"{c.failed_unlocks} failed unlocks",
        f"limits:       {c.open_connections} connections open, {c.evicted_connections} closed "
        f"to make room, {c.refused_connections} refused; {c.buffered_bytes // 1024} KiB "
        f"buffered, {c.waiting_for_memory} waiting for memory",
    ]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    st = call(args, p.Status(), p.StatusReply)
    assert isinstance(st, p.StatusReply)
    if args.json:
        data = msgspec.to_builtins(st)
        data.pop("op", None)
        print(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())
    else:
        print(status_text(st))
    return EXIT_OK


def cmd_pins(args: argparse.Namespace) -> int:
    if args.pins_cmd == "accept":
        pem = Path(args.key_file).read_text() if args.key_file else None
        # A malformed ORIGIN is refused by the agent with the origins module's own hint.
        reply = call(args, p.PinAccept(origin=args.origin, router_key_pem=pem), p.Accepted)
        assert isinstance(reply, p.Accepted)
        say(f"pinned {reply.origin} to {reply.fingerprint}")
    elif args.pins_cmd == "forget":
        call(args, p.PinForget(origin=args.origin), p.Ok)
        say(f"forgot the pin of {args.origin}")
    else:
        pins = call(args, p.PinsList(), p.PinsReply)
        assert isinstance(pins, p.PinsReply)
        if args.json:
            print(msgspec.json.encode(pins.pins).decode())
        elif not pins.pins:
            say(f"no routers pinned (policy: {pins.policy})")
        for pin in pins.pins:
            pending = (
                f"  CHANGED KEY OFFERED: {pin.pending_fingerprint}"
                if pin.pending_fingerprint
                else ""
            )
            print(f"{pin.origin}  {pin.fingerprint}{pending}")
    return EXIT_OK


def cmd_apps(args: argparse.Namespace) -> int:
    if args.apps_cmd == "forget":
        call(args, p.AppForget(app=args.app), p.Ok)
        say(f"forgot {args.app}: its next use asks again")
        return EXIT_OK
    reply = call(args, p.Apps(), p.AppsReply)
    assert isinstance(reply, p.AppsReply)
    if args.json:
        print(msgspec.json.encode(reply).decode())
        return EXIT_OK
    if not reply.apps:
        say(f"no apps since unlock (confirm: {reply.confirm})")
    for app in reply.apps:
        print(f"{app.decision:10} {app.uses:5} uses  {app.app}")
    return EXIT_OK
