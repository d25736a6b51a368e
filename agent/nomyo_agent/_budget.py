"""The agent's process-wide budget for buffered bytes, shared by every connection.

Rules of this module:

- A connection takes a large frame's whole length from the budget *before* buffering its body
  (the length is known from the frame header), and gives it back once the request is answered.
  Small frames (``protocol.SMALL_FRAME_BYTES``) need no share: 512 of them are 32 MiB at most.
- When the budget cannot cover a frame, the connection waits its turn (first come, first served)
  with reading paused; admitted frames can always complete, so waiting never deadlocks.
- A reply that the peer does not take (a transport write buffer over its high-water mark) is
  charged too, whatever the balance, since its memory is already spent; until it drains, new
  large frames wait. The server closes a connection that leaves a reply untaken too long.
- Pure bookkeeping: no I/O, no clock. Callbacks run synchronously inside ``release``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["ByteBudget"]


class ByteBudget:
    """Bytes in use against a limit, and a queue of those waiting for some."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiting: OrderedDict[object, tuple[int, Callable[[], None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def try_take(self, n: int) -> bool:
        """Take ``n`` bytes if they fit (or if nothing is in use) and nobody waits before us."""
        if self._waiting or (self.used and self.used + n > self.limit):
            return False
        self._add(n)
        return True

    def charge(self, n: int) -> None:
        """Take ``n`` bytes already spent, whatever the balance."""
        self._add(n)

    def wait(self, owner: object, n: int, granted: Callable[[], None]) -> None:
        """Queue ``owner`` for ``n`` bytes; ``granted()`` runs once they are taken for it."""
        self._waiting[owner] = (n, granted)

    def cancel(self, owner: object) -> None:
        self._waiting.pop(owner, None)

    def release(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "released more than was taken"
        while self._waiting:
            owner, (need, granted) = next(iter(self._waiting.items()))
            if self.used and self.used + need > self.limit:
                return
            del self._waiting[owner]
            self._add(need)
            granted()

    def _add(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)
