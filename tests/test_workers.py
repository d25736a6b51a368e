"""The crypto pool's rules (``_workers.CryptoPool``), with stand-in work: the first small request
of a turn runs inline, requests that queue or a large payload go to the workers, the pool never
holds more than twice its workers, and what is done comes back on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from nomyo_agent import protocol as p
from nomyo_agent._dispatch import Work, attempt
from nomyo_agent._state import Peer
from nomyo_agent._workers import INLINE_MAX_BYTES, CryptoPool

PEER = Peer(pid=1, uid=0, gid=0, exe="t")


def work(size: int = 10, gate: threading.Event | None = None) -> tuple[Work, list[str]]:
    ran_on: list[str] = []

    def run() -> p.Response:
        ran_on.append(threading.current_thread().name)
        if gate is not None:
            gate.wait(10)
        return p.Ok()

    return Work(run, "open", PEER, "", size), ran_on


def offer(pool: CryptoPool, w: Work, done: Callable[[p.Response | Exception], None]) -> None:
    """What the server does with a seal or open: inline if the pool says so, else submit."""
    if pool.take_inline(w):
        done(attempt(w.run))
    else:
        pool.submit(w, done)


def test_a_lone_small_request_runs_inline_and_others_go_to_workers() -> None:
    async def go() -> None:
        pool = CryptoPool(workers=2)
        loop_thread = threading.current_thread().name
        done = asyncio.Event()
        lone, lone_on = work()
        offer(pool, lone, lambda _: done.set())
        await done.wait()
        assert lone_on == [loop_thread]
        assert (pool.inline, pool.offloaded) == (1, 0)

        big, big_on = work(INLINE_MAX_BYTES + 1)  # a large payload never blocks the loop
        finished: list[p.Response | Exception] = []
        offer(pool, big, finished.append)
        while not finished:
            await asyncio.sleep(0.01)
        assert big_on[0].startswith("nomyo-crypto")

        # Three small ones in one turn of the loop: the first inline, the others (queued
        # behind it) to the workers.
        three = [work(), work(), work()]
        for w, _ in three:
            offer(pool, w, finished.append)
        while len(finished) < 4:
            await asyncio.sleep(0.01)
        assert all(isinstance(f, p.Ok) for f in finished)
        assert [on[0].startswith("nomyo-crypto") for _, on in three] == [False, True, True]
        pool.shutdown()

    asyncio.run(go())


def test_the_pool_holds_twice_its_workers_and_wakes_waiters_in_order() -> None:
    async def go() -> None:
        pool = CryptoPool(workers=1)
        gate = threading.Event()
        finished: list[p.Response | Exception] = []
        for _ in range(2):
            pool.submit(work(INLINE_MAX_BYTES + 1, gate=gate)[0], finished.append)
        await asyncio.sleep(0)  # the batch is decided at the end of the loop's turn
        assert pool.full
        woken: list[str] = []
        pool.wait("a", lambda: woken.append("a"))
        pool.wait("b", lambda: woken.append("b"))
        pool.wait("gone", lambda: woken.append("gone"))
        pool.cancel("gone")  # a connection that closed meanwhile
        gate.set()
        while len(finished) < 2:
            await asyncio.sleep(0.01)
        assert woken == ["a", "b"]
        pool.shutdown()

    asyncio.run(go())


def test_a_failure_on_a_worker_comes_back_as_the_exception() -> None:
    async def go() -> None:
        pool = CryptoPool(workers=1)

        def boom() -> p.Response:
            raise ValueError("bad package")

        outcome: list[p.Response | Exception] = []
        pool.submit(Work(boom, "open", PEER, "", INLINE_MAX_BYTES + 1), outcome.append)
        while not outcome:
            await asyncio.sleep(0.01)
        assert isinstance(outcome[0], ValueError)
        pool.shutdown()

    asyncio.run(go())
