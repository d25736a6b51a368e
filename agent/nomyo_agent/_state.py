"""The agent's state and its timers, with no I/O of its own.

Rules: every change of state is a method of ``AgentState`` (the server, the dispatcher and custody
call them and never assign a field; ``tests/test_core_rules.py`` walks the package to keep it so);
time comes from an injected ``Clock`` (``CLOCK_BOOTTIME`` in production, so that time
spent suspended counts towards the idle timeout and the maximum lifetime); the unlocked key is
held in exactly one place (``AgentState.key``) so that ``lock`` provably drops the only
reference; watchers are callbacks that must not block (the server's drops a watcher whose
unsent events pile up, rather than let a stuck tray grow the agent's memory).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from nomyo_agent import protocol as p

if TYPE_CHECKING:
    from nomyo_agent._identity import IdentityInfo, UnlockedKey

__all__ = ["AgentState", "Clock", "MutableCounters", "Peer", "SystemClock", "app_label"]

RECENT_CLIENTS = 16
APPS_REMEMBERED = 1024  # first uses reported per unlock; past this a flood is not worth a line each
APP_NAME_MAX = 64


def app_label(app: str) -> str:
    """A peer-given app name made safe to show: printable, one line, at most 64 characters."""
    cleaned = "".join(c if c.isprintable() else "?" for c in app.strip())
    return cleaned[:APP_NAME_MAX]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a clock that keeps counting during suspend."""

    def wall(self) -> float:
        """Unix time, for display only."""


class SystemClock:
    _id = getattr(time, "CLOCK_BOOTTIME", None)

    def now(self) -> float:
        if self._id is not None:
            return time.clock_gettime(self._id)
        return time.monotonic()  # macOS/Windows: monotonic; documented in docs/key-custody.md

    def wall(self) -> float:
        return time.time()


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection, from the kernel (SO_PEERCRED/getpeereid)."""

    pid: int
    uid: int
    gid: int
    exe: str
    where: p.PinEntry | None = None  # the display/terminal its Hello named, for prompts
    app: str = ""  # who it is, for approvals: executable path (and script); see _peer.app_of


class MutableCounters(p.Counts):
    """The agent's running tallies: ``protocol.Counts``, whose fields are the one list of
    counters, plus where the gauges come from (``snapshot`` adds them to make the wire's
    ``Counters``)."""

    # Read at snapshot time from whoever owns them (the server: open connections, the budget).
    gauges: Callable[[], dict[str, int]] | None = None

    def snapshot(self) -> p.Counters:
        values = {name: getattr(self, name) for name in p.Counts.__struct_fields__}
        if self.gauges is not None:
            values.update(self.gauges())
        return p.Counters(**values)


class AgentState:
    def __init__(
        self,
        *,
        clock: Clock,
        idle_timeout: float,
        max_lifetime: float,
        info: IdentityInfo | None,
        autostarted: bool = False,
    ) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.info = info
        self.autostarted = autostarted
        self.key: UnlockedKey | None = None
        self.unlocked_at: float | None = None  # clock.now()
        self.unlocked_wall: float | None = None
        self.last_used: float | None = None
        self.started = clock.now()
        self.counters = MutableCounters()
        self.served_since_unlock = 0
        # Keyed by pid and app name: one nomyo-proxy process serves many apps, one per token.
        self.recent: collections.OrderedDict[tuple[int, str], p.ClientInfo] = (
            collections.OrderedDict()
        )
        self.apps_seen: set[str] = set()  # display names served since unlock
        self.on_first_use: list[Callable[[str], None]] = []  # the audit log: one line per app
        self.failed_unlocks = 0  # consecutive, for the growing delay; reset on success
        self.user_locked = False  # locked on request: no auto-unlock until an explicit unlock
        self.watchers: set[Callable[[p.StateEvent], None]] = set()
        self.on_lock: list[Callable[[], None]] = []
        self.locked_by: str | None = None  # the reason of the last lock that dropped a key

    # --- queries -----------------------------------------------------------------------------

    @property
    def state(self) -> p.State:
        if self.key is not None:
            return p.State.UNLOCKED
        return p.State.LOCKED if self.info is not None else p.State.NO_IDENTITY

    def deadlines(self) -> tuple[float | None, float | None]:
        """When the idle lock and the lifetime lock fall due, on ``clock.now()``'s scale."""
        if self.key is None or self.unlocked_at is None or self.last_used is None:
            return None, None
        idle = self.last_used + self.idle_timeout if self.idle_timeout > 0 else None
        life = self.unlocked_at + self.max_lifetime if self.max_lifetime > 0 else None
        return idle, life

    def time_left(self) -> tuple[float | None, float | None]:
        now = self.clock.now()
        idle, life = self.deadlines()
        return (
            None if idle is None else max(0.0, idle - now),
            None if life is None else max(0.0, life - now),
        )

    def next_deadline(self) -> float | None:
        due = [d for d in self.deadlines() if d is not None]
        return min(due) if due else None

    def event(
        self, reason: str, origin: str | None = None, refused: str | None = None
    ) -> p.StateEvent:
        idle_left, _ = self.time_left()
        return p.StateEvent(
            state=self.state,
            reason=reason,
            fingerprint=self.info.fingerprint if self.info else None,
            origin=origin,
            idle_left=idle_left,
            served_since_unlock=self.served_since_unlock,
            recent_clients=list(reversed(self.recent.values())),
            refused_fingerprint=refused,
        )

    # --- changes -----------------------------------------------------------------------------

    def emit(self, reason: str, origin: str | None = None, refused: str | None = None) -> None:
        event = self.event(reason, origin, refused)
        for watcher in list(self.watchers):
            watcher(event)

    def set_unlocked(self, key: UnlockedKey, reason: str) -> None:
        """Hold ``key`` from now on (a key held before is closed) and tell watchers ``reason``:
        a new unlock period, with its timers, its recent clients and its apps started afresh,
        and the failed-unlock delay and an explicit lock forgotten."""
        if self.key is not None and self.key is not key:
            self.key.close()
        self.key = key
        now = self.clock.now()
        self.unlocked_at = self.last_used = now
        self.unlocked_wall = self.clock.wall()
        self.served_since_unlock = 0
        self.recent.clear()
        self.apps_seen.clear()
        self.failed_unlocks = 0
        self.user_locked = False
        self.emit(reason)

    def install(self, info: IdentityInfo, key: UnlockedKey, reason: str) -> None:
        """A new identity replaces the old one (keygen, import) and is held unlocked."""
        self.lock("replaced")
        self.info = info
        self.set_unlocked(key, reason)

    def user_lock(self) -> None:
        """Lock on the user's request: no auto-unlock until an explicit unlock."""
        self.lock("lock")
        self.user_locked = True

    def failed_unlock(self) -> int:
        """Count a wrong passphrase; returns how many came in a row (for the growing delay)."""
        self.failed_unlocks += 1
        self.counters.failed_unlocks += 1
        return self.failed_unlocks

    def set_timeouts(self, idle_timeout: float, max_lifetime: float) -> None:
        """New settings (SIGHUP): they apply to the unlock period under way too."""
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime

    def lock(self, reason: str) -> bool:
        """Drop and clear the key; returns whether there was one. Emits ``reason``."""
        key, self.key = self.key, None
        self.unlocked_at = self.unlocked_wall = self.last_used = None
        if key is None:
            return False
        key.close()
        self.locked_by = reason
        for hook in self.on_lock:
            hook()
        self.emit(reason)
        return True

    def touch(self, peer: Peer, app: str = "") -> None:
        """A seal or open was served for ``peer`` (on behalf of ``app``, a name the peer gave):
        restart the idle timer, remember the app, tell ``on_first_use`` about a new one."""
        self.last_used = self.clock.now()
        self.served_since_unlock += 1
        app = app_label(app)
        # The app name goes into ``exe`` rather than a new ClientInfo field: an older tray or CLI
        # refuses unknown fields in a status reply, and ``exe`` is display-only already.
        name = f"{peer.exe}: {app}" if app else peer.exe
        key = (peer.pid, app)
        self.recent.pop(key, None)
        self.recent[key] = p.ClientInfo(pid=peer.pid, exe=name, last_seen=self.clock.wall())
        while len(self.recent) > RECENT_CLIENTS:
            self.recent.popitem(last=False)
        if name not in self.apps_seen and len(self.apps_seen) < APPS_REMEMBERED:
            self.apps_seen.add(name)
            for hook in self.on_first_use:
                hook(name)

    def check_timers(self) -> str | None:
        """Lock if a deadline has passed; returns the reason when it locked."""
        idle, life = self.deadlines()
        now = self.clock.now()
        if life is not None and now >= life:
            self.lock("max_lifetime")
            return "max_lifetime"
        if idle is not None and now >= idle:
            self.lock("idle_timeout")
            return "idle_timeout"
        return None
