"""The crypto pool's rules (``_workers.CryptoPool``), with stand-in work: the first small request
of a turn runs inline, requests that queue or a large payload go to the workers (large ones at
a lower priority), the pool never holds more than twice its workers, and what is done comes
back on the event loop."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable

import pytest

from nomyo_agent import _workers
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
        assert big_on[0].startswith("nomyo-bulk")

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


def test_a_small_request_beside_large_work_in_flight_still_runs_inline() -> None:
    """Only small work in flight means small requests queue; large work in flight does not:
    a small one then skips the two thread hops (measured: the p99 of small opens beside 8 MiB
    payloads, bench/agent_load.py)."""

    async def go() -> None:
        pool = CryptoPool(workers=2)
        loop_thread = threading.current_thread().name
        gate = threading.Event()
        finished: list[p.Response | Exception] = []
        big, big_on = work(INLINE_MAX_BYTES + 1, gate=gate)
        offer(pool, big, finished.append)
        await asyncio.sleep(0)  # the batch leaves at the end of the turn
        assert (pool.in_flight, pool.large_in_flight) == (1, 1)
        assert sys.getswitchinterval() == pytest.approx(_workers.LARGE_SWITCH_INTERVAL)
        small, small_on = work()
        offer(pool, small, finished.append)
        assert small_on == [loop_thread]
        await asyncio.sleep(0)
        big2, _ = work(INLINE_MAX_BYTES + 1, gate=gate)
        offer(pool, big2, finished.append)  # a large one about to leave does not count either
        small2, small2_on = work()
        offer(pool, small2, finished.append)
        assert small2_on == [loop_thread]
        await asyncio.sleep(0)  # a new turn: the inline slot is free again
        slow, slow_on = work(gate=gate)
        pool.submit(slow, finished.append)  # a small one on a worker, as when requests queue
        await asyncio.sleep(0)
        after, after_on = work()
        offer(pool, after, finished.append)  # it queues behind the small one in flight
        gate.set()
        while len(finished) < 6:
            await asyncio.sleep(0.01)
        assert after_on[0].startswith("nomyo-crypto")
        assert big_on[0].startswith("nomyo-bulk")
        assert slow_on[0].startswith("nomyo-crypto")
        assert (pool.in_flight, pool.large_in_flight) == (0, 0)
        assert sys.getswitchinterval() == pytest.approx(_workers.SWITCH_INTERVAL)  # no large work
        pool.shutdown()

    asyncio.run(go())


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
def test_large_work_runs_at_a_lower_priority_and_small_work_does_not() -> None:
    """The kernel gives a core first to the event loop and the apps waiting on small replies."""

    def priority_of(size: int) -> Work:
        def run() -> p.Response:
            nice.append((size, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            return p.Ok()

        return Work(run, "open", PEER, "", size)

    nice: list[tuple[int, int]] = []

    async def go() -> None:
        pool = CryptoPool(workers=1)
        finished: list[p.Response | Exception] = []
        pool.submit(priority_of(10), finished.append)  # a small one that queued
        pool.submit(priority_of(INLINE_MAX_BYTES + 1), finished.append)
        while len(finished) < 2:
            await asyncio.sleep(0.01)
        pool.shutdown()

    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    asyncio.run(go())
    assert sorted(nice) == [(10, ours), (INLINE_MAX_BYTES + 1, min(19, ours + _workers.BULK_NICE))]


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
