"""Issue 2's figures: unlock time, and what the RPC adds to one ``open`` of a 4 KiB response.

Run with ``./dev figures`` (or ``.venv/bin/python bench/agent_figures.py``). It starts its own
private D-Bus + gnome-keyring and agent (``nomyo_devserver.session``, ``.agents``), so it
touches nothing of yours, and prints one table.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from nomyo_agent import _envelope, _keys
from nomyo_agent import protocol as p
from nomyo_devserver.agents import open_agent
from nomyo_devserver.session import SessionError, open_session

ROUNDS = 200
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def median_ms(fn: Callable[[], object], rounds: int = ROUNDS) -> tuple[float, float]:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9)]


CODE_PATH = "open 4 KiB through the agent's codec and dispatcher"


def agent_code_path(tmp: Path, plaintext: bytes) -> Callable[[], object]:
    """The agent's own work for one open of ``plaintext`` (frame split, decode, dispatch, open,
    encode), with the socket and the event loop taken away: the in-process core the tests use
    (tests/support/core.py), holding an RSA-4096 identity."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.core import PEER, Core

    core = Core(tmp)
    core.install_identity(bits=4096)
    core.call(p.Unlock(passphrase=b""), p.Ok)
    assert core.state.key is not None
    package = bytes(_envelope.seal(core.state.key.public_key, plaintext))
    frame = p.encode_frame(p.Open(package=package))

    def one() -> bytes | bytearray:
        (body,) = p.FrameReader(requests=True).feed(frame)
        return p.encode_frame(core.dispatcher.call_now(p.decode_request(body), PEER))

    return one


def main() -> None:
    rows: list[tuple[str, float, float]] = []
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    wrapped = key.public_key().encrypt(os.urandom(32), OAEP)
    rows.append(
        ("bare RSA-4096 OAEP decrypt, in-process", *median_ms(lambda: key.decrypt(wrapped, OAEP)))
    )
    response = os.urandom(2048).hex().encode()  # 4 KiB of JSON-ish text
    package = _envelope.seal(key.public_key(), response)
    rows.append(
        ("open 4 KiB package, in-process", *median_ms(lambda: _envelope.open_package(key, package)))
    )

    with tempfile.TemporaryDirectory() as core_dir:
        rows.append((CODE_PATH, *median_ms(agent_code_path(Path(core_dir), response))))

    with tempfile.TemporaryDirectory() as tmp, open_session(Path(tmp)) as session:
        print("agent: a private session bus and keyring, an RSA-4096 identity", file=sys.stderr)
        with open_agent(session.env, bits=4096) as agent:
            conn = agent.connect(timeout=120)
            assert agent.identity is not None
            agent_key = _keys.load_router_key(agent.identity.public_key_pem)
            agent_package = bytes(_envelope.seal(agent_key, response))
            rows.append(
                (
                    "open 4 KiB package over the socket",
                    *median_ms(lambda: conn.call(p.Open(package=agent_package), p.OpenReply)),
                )
            )
            router_pem = _keys.public_pem(key.public_key())
            seal = p.Seal(
                origin="http://127.0.0.1:1", router_key_pem=router_pem, plaintext=response
            )
            rows.append(
                ("seal 4 KiB over the socket", *median_ms(lambda: conn.call(seal, p.SealReply)))
            )
            rows.append(
                (
                    "status round trip over the socket",
                    *median_ms(lambda: conn.call(p.Status(), p.StatusReply)),
                )
            )

            def unlock(passphrase: bytes) -> None:
                conn.call(p.Lock(), p.Ok)
                conn.call(p.Unlock(passphrase=passphrase), p.Ok)

            rows.append(
                ("unlock, no passphrase (keyring -> ready)", *median_ms(lambda: unlock(b""), 20))
            )
            conn.call(
                p.Generate(bits=4096, passphrase=b"bench passphrase", force=True), p.IdentityReply
            )
            rows.append(
                (
                    "unlock, passphrase (PBKDF2 600k + keyring)",
                    *median_ms(lambda: unlock(b"bench passphrase"), 10),
                )
            )
            conn.close()

    print(f"\n{'operation':<46} {'median ms':>10} {'p90 ms':>8}")
    print("-" * 66)
    for name, med, p90 in rows:
        print(f"{name:<46} {med:>10.3f} {p90:>8.3f}")
    by_name = {name: med for name, med, _ in rows}
    rsa_only = by_name["bare RSA-4096 OAEP decrypt, in-process"]
    in_process = by_name["open 4 KiB package, in-process"]
    code_path = by_name[CODE_PATH]
    over_socket = by_name["open 4 KiB package over the socket"]
    for label, value, base in (
        ("the agent's code around an open vs open in-process", code_path, in_process),
        ("open over the socket vs the bare RSA decryption", over_socket, rsa_only),
        ("open over the socket vs open in-process", over_socket, in_process),
    ):
        print(f"{label:<52} {100 * (value / base - 1):+6.1f} %")
    print("(the socket's share is the kernel waking two idle processes; it varies by machine)")


if __name__ == "__main__":
    try:
        main()
    except SessionError as exc:
        raise SystemExit(f"error: {exc}\nhint: {exc.hint}") from None
