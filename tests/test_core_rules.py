"""The agent's rules, decided by the dispatcher in-process (``support/core.py``): milliseconds
per test, no socket, no process, no keyring. The same rules hold through the real socket and the
real keyring in ``test_agent_server.py`` and ``test_agent_keyring.py``."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization

import nomyo_agent
from nomyo_agent import _envelope, _keys
from nomyo_agent import protocol as p
from nomyo_agent._custody import unlock_delay
from nomyo_agent._keyuse import INLINE_MAX_BYTES
from nomyo_agent._state import AgentState
from support.core import Core
from support.fakes import FakeClock
from support.keys import rsa_key

ORIGIN = "https://router.example"
ROUTER = _keys.public_pem(rsa_key(2048, 1).public_key())
OTHER = _keys.public_pem(rsa_key(2048, 2).public_key())
WHERE = p.PinEntry(env={"DISPLAY": ":4242"})
T = TypeVar("T")


def seal(core: Core, origin: str = ORIGIN, pem: str = ROUTER) -> p.Response:
    return core.ask(p.Seal(origin=origin, router_key_pem=pem, plaintext=b"{}"))


def test_the_lock_check_comes_before_anything_is_parsed(core: Core) -> None:
    core.install_identity(passphrase=b"pw")
    # Garbage a locked agent never looks at: the answer is "locked", not a parse error.
    assert core.error(p.Seal(origin=ORIGIN, router_key_pem="not a key", plaintext=b"")).code is (
        p.ErrorCode.LOCKED
    )
    assert core.error(p.Open(package=b"not a package")).code is p.ErrorCode.LOCKED
    assert core.state.counters.seals == core.state.counters.opens == 0


def test_an_identity_without_passphrase_unlocks_itself_on_first_use(core: Core) -> None:
    core.install_identity()
    assert isinstance(seal(core), p.SealReply)
    assert core.reasons() == ["auto_unlock"]
    assert core.asked == []  # nothing to ask


def test_an_identity_with_a_passphrase_never_unlocks_itself(core: Core) -> None:
    core.install_identity(passphrase=b"pw")
    assert core.error(p.Seal(origin=ORIGIN, router_key_pem=ROUTER, plaintext=b"{}")).code is (
        p.ErrorCode.LOCKED
    )
    assert core.asked == []
    assert core.reasons() == []


def test_an_explicit_lock_holds_until_an_explicit_unlock(core: Core) -> None:
    core.install_identity()
    seal(core)
    core.call(p.Lock(), p.Ok)
    assert core.error(p.Open(package=b"x")).code is p.ErrorCode.LOCKED  # no auto-unlock now
    core.call(p.Unlock(passphrase=b""), p.Ok)
    assert isinstance(seal(core), p.SealReply)
    assert core.reasons() == ["auto_unlock", "lock", "unlock"]


def test_failed_unlocks_wait_longer_each_time_and_a_success_resets_the_delay(core: Core) -> None:
    core.install_identity(passphrase=b"right")
    for _ in range(3):
        assert core.error(p.Unlock(passphrase=b"wrong")).code is p.ErrorCode.BAD_PASSPHRASE
    assert core.slept == [0.25, 0.5, 1.0] == [unlock_delay(n) for n in (1, 2, 3)]
    assert core.state.counters.failed_unlocks == 3
    core.call(p.Unlock(passphrase=b"right"), p.Ok)
    core.call(p.Lock(), p.Ok)
    core.error(p.Unlock(passphrase=b"wrong"))
    assert core.slept[-1] == 0.25
    assert unlock_delay(100) == 16.0  # bounded


def test_pinentry_asks_again_after_a_wrong_passphrase_and_a_cancel_is_its_own_error(
    core: Core,
) -> None:
    core.install_identity(passphrase=b"right")
    core.answers = [b"wrong", b"right"]
    core.call(p.Unlock(pinentry=WHERE), p.Ok)
    assert len(core.asked) == 2
    assert not core.asked[0].get("error")
    assert core.asked[1].get("error")
    core.call(p.Lock(), p.Ok)
    core.answers = [None]
    assert core.error(p.Unlock(pinentry=WHERE)).code is p.ErrorCode.CANCELLED


def test_a_changed_router_key_is_refused_under_every_spelling_and_told_to_watchers(
    core: Core,
) -> None:
    core.install_identity()
    assert isinstance(seal(core), p.SealReply)  # trust on first use
    for spelling in (ORIGIN, "HTTPS://Router.Example:443", "https://router.example./v1"):
        error = core.error(p.Seal(origin=spelling, router_key_pem=OTHER, plaintext=b"{}"))
        assert error.code is p.ErrorCode.PIN_MISMATCH
        assert error.origin == ORIGIN
    refused = core.watch(lambda e: e.reason == "pin_mismatch")
    assert len(refused) == 3
    assert {e.refused_fingerprint for e in refused} == {
        _keys.fingerprint(rsa_key(2048, 2).public_key())
    }


def test_seal_then_open_round_trip_and_the_counters_say_what_happened(core: Core) -> None:
    core.install_identity()
    sealed = seal(core)
    assert isinstance(sealed, p.SealReply)
    ours = _keys.load_router_key(sealed.public_key_pem)
    answer = _envelope.seal(ours, b'{"ok": true}', processed_at=0.5)
    opened = core.call(p.Open(package=answer), p.OpenReply)
    assert (opened.plaintext, opened.processed_at) == (b'{"ok": true}', 0.5)
    core.error(p.Open(package=b"garbage"))
    counters = core.call(p.Status(), p.StatusReply).counters
    assert (counters.requests, counters.seals, counters.opens, counters.errors) == (4, 1, 1, 1)


def test_idle_time_is_counted_from_the_last_use(core: Core) -> None:
    core.install_identity()
    seal(core)
    core.clock.advance(59)
    seal(core)  # a use moves the idle deadline
    core.clock.advance(59)
    core.state.check_timers()
    assert core.state.state is p.State.UNLOCKED
    core.clock.advance(2)
    core.state.check_timers()
    assert core.state.state is p.State.LOCKED
    assert core.reasons()[-1] == "idle_timeout"


# --- who changes the state ---------------------------------------------------------------


def _state_fields() -> set[str]:
    state = AgentState(clock=FakeClock(), idle_timeout=0, max_lifetime=0, info=None)
    return set(vars(state))


def _assigned(tree: ast.AST) -> list[ast.Attribute]:
    """Every ``x.attr`` that an assignment (plain, augmented, annotated, in a tuple, a ``for``
    or a ``with``) binds."""
    targets: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets.extend(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
            targets.append(node.target)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets.append(node.optional_vars)
        elif isinstance(node, ast.NamedExpr):
            targets.append(node.target)
    found = []
    while targets:
        target = targets.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            targets.extend(target.elts)
        elif isinstance(target, ast.Starred):
            targets.append(target.value)
        elif isinstance(target, ast.Attribute):
            found.append(target)
    return found


def test_only_agent_state_itself_assigns_its_fields() -> None:
    fields = _state_fields()
    package = Path(nomyo_agent.__file__).parent
    offenders = []
    for module in sorted(package.glob("*.py")):
        if module.name == "_state.py":
            continue
        for target in _assigned(ast.parse(module.read_text(), str(module))):
            owner = ast.unparse(target.value)
            # ``self.key = ...`` in another class is that class's own field; any other owner
            # whose name says it is the state (state, self.state, server.state) is not.
            if target.attr in fields and owner.split(".")[-1].endswith("state"):
                offenders.append(f"{module.name}:{target.lineno}: {ast.unparse(target)}")
    assert offenders == [], "change AgentState through its methods:\n" + "\n".join(offenders)


def test_the_state_walk_finds_an_assignment_in_every_spelling() -> None:
    code = "state.info = 1\nself.state.failed_unlocks += 1\na, server.state.key = 1, 2\n"
    found = {ast.unparse(t) for t in _assigned(ast.parse(code))}
    assert found == {"state.info", "self.state.failed_unlocks", "server.state.key"}


def test_a_lock_forgets_every_app_decision_through_the_lock_hook(core: Core) -> None:
    core.install_identity()
    seal(core)
    assert [a.app for a in core.call(p.Apps(), p.AppsReply).apps] == ["app"]
    core.call(p.Lock(), p.Ok)
    assert core.call(p.Apps(), p.AppsReply).apps == []


def test_reloaded_timeouts_apply_to_the_unlock_under_way(core: Core) -> None:
    core.install_identity()
    seal(core)
    core.state.set_timeouts(idle_timeout=5, max_lifetime=3600)
    core.clock.advance(5)
    assert core.state.check_timers() == "idle_timeout"
    assert core.reasons() == ["auto_unlock", "idle_timeout"]


def test_a_new_identity_replaces_the_held_one_and_starts_a_new_unlock(core: Core) -> None:
    core.install_identity()
    seal(core)
    core.clock.advance(30)
    pem = rsa_key(2048, 4).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    new = core.call(p.Import(pem=pem, force=True), p.IdentityReply)
    assert core.reasons() == ["auto_unlock", "replaced", "import"]
    assert core.state.info is not None
    assert core.state.info.fingerprint == new.fingerprint
    assert core.state.served_since_unlock == 0
    assert core.state.time_left()[0] == 60  # the idle timer starts again


def test_a_large_seal_that_waited_for_its_pin_is_not_sealed_on_the_event_loop(
    core: Core,
) -> None:
    """The first seal to a new router waits for its pin to be written; its payload may be
    megabytes, and sealing them in the awaiting task held the event loop (16 ms for 8 MiB,
    measured beside other clients' small opens). Its cryptography goes off the loop."""
    offloaded: list[str] = []

    async def recording(fn: Callable[[], T]) -> T:
        offloaded.append(getattr(fn, "func", fn).__name__)
        return fn()

    core.services.offload = recording
    core.install_identity()
    small = core.ask(p.Seal(origin=ORIGIN, router_key_pem=ROUTER, plaintext=b"{}"))
    assert isinstance(small, p.SealReply)
    assert offloaded == ["check"]  # the pin's write; a small seal is done in place
    large = b"x" * (INLINE_MAX_BYTES + 1)
    big = core.ask(p.Seal(origin="https://other.example", router_key_pem=ROUTER, plaintext=large))
    assert isinstance(big, p.SealReply)
    assert offloaded == ["check", "check", "seal_it"]
