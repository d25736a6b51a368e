"""What each request type asks of the server (``_dispatch.KINDS``), and the server holding to it:
an exhaustive table, secrets zeroed once answered, a request that waits never in the way of one
that does not, file writes and probes off the event loop, watch and stop. In-process
(``support/core.py``); the socket tests run the agent's own server on the test's event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import typing
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from nomyo_agent import _keys
from nomyo_agent import protocol as p
from nomyo_agent._dispatch import KINDS, Later, Work, kind_of, kind_of_op
from nomyo_agent._pins import PinStore
from nomyo_agent.connection import AgentConnection
from support.core import PEER, Core, Gate, serving
from support.keys import rsa_key

ORIGIN = "https://router.example"
ROUTER = _keys.public_pem(rsa_key(2048, 1).public_key())
WHERE = p.PinEntry(env={"DISPLAY": ":4242"})

R = typing.TypeVar("R", bound=p.Response)


def wire(request: p.Request) -> p.Request:
    """The request as the server hands it over: decoded from its frame, so that its bytes are
    the agent's own to wipe (never the test's constants)."""
    return p.decode_request(p.encode(request))


def call(path: str, request: p.Request, expect: type[R]) -> R:
    with AgentConnection.open(path, timeout=10) as conn:
        return conn.call(request, expect)


# --- the table -----------------------------------------------------------------------------


def test_every_request_type_of_the_protocol_has_a_kind() -> None:
    assert set(KINDS) == set(typing.get_args(p.Request))
    for request_type in KINDS:  # and an undecoded frame's op finds the same one
        assert kind_of_op(request_type.__struct_config__.tag) is KINDS[request_type]
    assert kind_of_op("no such op") is None
    assert kind_of_op(None) is None


def test_the_table_names_what_waits_what_carries_secrets_and_what_watches_or_stops() -> None:
    slow = {t.__name__ for t, k in KINDS.items() if k.slow}
    assert slow == {"Status", "Unlock", "Generate", "Import", "PinsList", "PinAccept", "PinForget"}
    assert {t.__name__ for t, k in KINDS.items() if k.crypto} == {"Seal", "Open"}
    assert {t.__name__: k.secrets for t, k in KINDS.items() if k.secrets} == {
        "Unlock": ("passphrase",),
        "Generate": ("passphrase",),
        "Import": ("passphrase", "file_password", "pem"),
    }
    assert [t for t, k in KINDS.items() if k.watch] == [p.Watch]
    assert [t for t, k in KINDS.items() if k.stop] == [p.Stop]
    for request_type, kind in KINDS.items():  # each field the table names exists
        assert set(kind.secrets) <= set(request_type.__struct_fields__)


def test_start_answers_at_once_hands_over_work_or_says_it_must_wait(core: Core) -> None:
    core.install_identity()
    core.call(p.Unlock(passphrase=b""), p.Ok)
    start = core.dispatcher.start
    assert isinstance(start(p.Hello(), PEER), p.HelloReply)
    assert isinstance(start(p.Apps(), PEER), p.AppsReply)
    assert isinstance(start(p.Stop(), PEER), p.Ok)
    assert kind_of(p.Stop()).stop
    for waits in (p.Status(), p.PinsList(), p.PinForget(origin=ORIGIN), p.Unlock()):
        assert isinstance(start(waits, PEER), Later), waits
    seal = p.Seal(origin=ORIGIN, router_key_pem=ROUTER, plaintext=b"{}")
    first = start(seal, PEER)
    assert isinstance(first, Later)  # a new pin is a file write: not on the hot path
    assert isinstance(asyncio.run(first.run()), p.SealReply)
    assert isinstance(start(seal, PEER), Work)  # pinned now: the hot path
    assert core.call(p.PinsList(), p.PinsReply).pins[0].origin == ORIGIN


def test_every_request_counts_once_whichever_way_it_was_answered(core: Core) -> None:
    core.install_identity()
    core.call(p.Hello(), p.HelloReply)  # at once
    seal = p.Seal(origin=ORIGIN, router_key_pem=ROUTER, plaintext=b"{}")
    core.call(seal, p.SealReply)  # waits: auto-unlock, then a new pin
    core.call(seal, p.SealReply)  # work
    core.error(p.PinForget(origin="https://other.example"))  # waits, fails
    core.error(p.Open(package=b"garbage"))  # work, fails
    counters = core.call(p.Status(), p.StatusReply).counters
    assert (counters.requests, counters.seals, counters.errors) == (6, 2, 2)


# --- secrets -------------------------------------------------------------------------------


def test_passphrases_from_the_wire_are_zeroed_once_answered_right_or_wrong(core: Core) -> None:
    core.install_identity(passphrase=b"right")
    wrong, right = wire(p.Unlock(passphrase=b"wrong")), wire(p.Unlock(passphrase=b"right"))
    assert isinstance(asyncio.run(core.dispatcher(wrong, PEER)), p.Error)
    assert isinstance(asyncio.run(core.dispatcher(right, PEER)), p.Ok)
    for request in (wrong, right):
        assert isinstance(request, p.Unlock)
        assert request.passphrase == bytes(5)


def test_an_imported_key_and_its_passwords_are_zeroed_once_answered(core: Core) -> None:
    pem = rsa_key(2048, 3).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"file password"),
    )
    request = wire(p.Import(pem=pem, file_password=b"file password", passphrase=b"new one"))
    assert isinstance(asyncio.run(core.dispatcher(request, PEER)), p.IdentityReply)
    assert isinstance(request, p.Import)
    assert (request.pem, request.file_password, request.passphrase) == (
        bytes(len(pem)),
        bytes(13),
        bytes(7),
    )


# --- waiting -------------------------------------------------------------------------------


def test_a_request_that_waits_on_a_person_holds_up_none_that_does_not(core: Core) -> None:
    core.install_identity(passphrase=b"right")
    core.answers = [b"right"]

    async def go() -> None:
        core.gate = gate = Gate()
        unlock = core.dispatcher.start(p.Unlock(pinentry=WHERE), PEER)
        assert isinstance(unlock, Later)
        unlocking = asyncio.ensure_future(unlock.run())
        await asyncio.wait_for(gate.shown.wait(), 5)  # the prompt is up; nobody answers yet
        assert isinstance(core.dispatcher.start(p.Hello(), PEER), p.HelloReply)
        locked = core.dispatcher.start(p.Open(package=b"x"), PEER)
        assert isinstance(locked, p.Error)
        assert locked.code is p.ErrorCode.LOCKED
        assert not unlocking.done()
        gate.released.set()
        assert isinstance(await unlocking, p.Ok)

    asyncio.run(go())
    assert core.state.state is p.State.UNLOCKED


class GatedPins(PinStore):
    """A pins file whose writes block (a slow disk, a stuck NFS home) until released."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing = threading.Event()
        self.release = threading.Event()

    def accept(self, origin: str, fingerprint: str | None, now: float) -> str:
        self.writing.set()
        assert self.release.wait(20), "never released"
        return super().accept(origin, fingerprint, now)


def test_a_blocked_pin_write_does_not_stop_another_connections_status(core: Core) -> None:
    pins = GatedPins(core.folder / "pins.json")
    core.services.pins = pins
    core.services.offload = asyncio.to_thread  # as in the agent: files on a thread

    async def go() -> None:
        async with serving(core) as served:
            accept = p.PinAccept(origin=ORIGIN, router_key_pem=ROUTER)
            accepting = asyncio.ensure_future(
                asyncio.to_thread(call, served.path, accept, p.Accepted)
            )
            assert await asyncio.to_thread(pins.writing.wait, 10)
            status = await asyncio.to_thread(call, served.path, p.Status(), p.StatusReply)
            assert status.state is p.State.NO_IDENTITY
            assert not accepting.done()  # still writing
            pins.release.set()
            assert (await accepting).origin == ORIGIN

    asyncio.run(go())


# --- watch and stop ------------------------------------------------------------------------


def test_a_watch_hears_the_state_now_and_each_change_and_stop_ends_the_server(
    core: Core,
) -> None:
    core.install_identity()

    def watch_unlock_stop(path: str) -> list[tuple[str, p.State]]:
        heard = []
        with AgentConnection.open(path, timeout=10) as watcher:
            events = watcher.watch()
            heard.append(next(events))
            with AgentConnection.open(path, timeout=10) as conn:
                conn.call(p.Unlock(passphrase=b""), p.Ok)
                heard.append(next(events))
                conn.call(p.Stop(), p.Ok)
            heard.extend(events)  # "stopping", then the agent closes the stream
        return [(e.reason, e.state) for e in heard]

    async def go() -> None:
        async with serving(core) as served:
            heard = await asyncio.to_thread(watch_unlock_stop, served.path)
            assert heard == [
                ("watch", p.State.LOCKED),
                ("unlock", p.State.UNLOCKED),
                ("stopping", p.State.UNLOCKED),
            ]
            await asyncio.wait_for(served.running, 10)  # it stopped by itself
            assert not os.path.exists(served.path)  # and removed its socket
            assert core.state.state is p.State.LOCKED  # and dropped the key

    asyncio.run(go())
