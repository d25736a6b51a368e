"""The few fakes the rules allow: an injected clock (timeouts without sleeping)."""

from __future__ import annotations


class FakeClock:
    """A clock that moves only when told; ``now`` is the suspend-counting clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
