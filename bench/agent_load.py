"""The agent under load: does it use every core, and do small requests wait behind big ones?

Run with ``./dev bench`` (after the table against the public client) or
``.venv/bin/python bench/agent_load.py``. Like
``agent_figures.py`` it starts its own private D-Bus, gnome-keyring and agent (RSA-4096), and
prints one table:

- opens per second of a 4 KiB answer with 1 connection and with 64 connections opening in a loop
  (on 2 cores, RSA-4096 decryption allows about 1 300 a second);
- the median and p99 of small opens from one client, alone, while another process seals and
  opens 8 MiB payloads in a loop, and while another process only spins on a core without
  talking to the agent: that last row is the floor that sharing the machine's cores costs,
  which no change to the agent can remove (on 2 cores the 8 MiB client, its agent worker and
  the small client's own process want more than the 2 cores there are).

The load comes from a separate process each, so that the clients' own GIL does not colour what
the agent does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo_agent import _envelope, _keys
from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection, AsyncAgentConnection
from nomyo_devserver.agents import open_agent
from nomyo_devserver.session import open_session

SECONDS = 5.0
SMALL = os.urandom(2048).hex().encode()  # 4 KiB of JSON-ish text
BIG = 8 * 1024 * 1024


def _small_package(path: str) -> bytes:
    with AgentConnection.open(path) as conn:
        pem = conn.call(p.PublicKey(), p.IdentityReply).public_key_pem
    return bytes(_envelope.seal(_keys.load_router_key(pem), SMALL))


async def _opens(path: str, connections: int, seconds: float) -> float:
    """Opens per second over ``connections`` connections, each opening in a loop."""
    package = _small_package(path)
    conns = [await AsyncAgentConnection.open(path) for _ in range(connections)]
    done = 0
    deadline = 0.0

    async def loop(conn: AsyncAgentConnection) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await conn.call(p.Open(package=package), p.OpenReply)
            done += 1

    for conn in conns:  # warm up every connection once
        await conn.call(p.Open(package=package), p.OpenReply)
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.monotonic() - start
    for conn in conns:
        await conn.aclose()
    return done / elapsed


def _latencies(path: str, seconds: float) -> list[float]:
    """Milliseconds of each small open from one connection, one after another."""
    package = _small_package(path)
    samples: list[float] = []
    with AgentConnection.open(path) as conn:
        conn.call(p.Open(package=package), p.OpenReply)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t = time.perf_counter()
            conn.call(p.Open(package=package), p.OpenReply)
            samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return samples


def _big_client(path: str) -> None:
    """The neighbour: seal and open 8 MiB payloads until killed."""
    router = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    router_pem = _keys.public_pem(router.public_key())
    with AgentConnection.open(path, timeout=120) as conn:
        pem = conn.call(p.PublicKey(), p.IdentityReply).public_key_pem
        plaintext = os.urandom(BIG // 2).hex().encode()
        package = bytes(_envelope.seal(_keys.load_router_key(pem), plaintext))
        seal = p.Seal(origin="http://127.0.0.1:1", router_key_pem=router_pem, plaintext=plaintext)
        print("ready", flush=True)
        while True:
            conn.call(seal, p.SealReply)
            conn.call(p.Open(package=package), p.OpenReply)


def _spinner() -> None:
    """A neighbour that only takes a core."""
    print("ready", flush=True)
    while True:
        pass


def _beside(path: str, env: dict[str, str], role: str) -> list[float]:
    """Small-open latencies while a neighbour process in ``role`` runs."""
    neighbour = subprocess.Popen(
        [sys.executable, __file__, role, path], stdout=subprocess.PIPE, env={**os.environ, **env}
    )
    assert neighbour.stdout is not None
    try:
        if neighbour.stdout.readline().strip() != b"ready":
            raise SystemExit(f"the {role} neighbour did not start")
        return _latencies(path, SECONDS)
    finally:
        neighbour.kill()
        neighbour.wait()


def _percentile(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * q))]


def main() -> None:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, open_session(Path(tmp)) as session:
        env = session.env
        with open_agent(env, bits=4096) as agent:  # an RSA-4096 identity, unlocked
            path = agent.path
            one = asyncio.run(_opens(path, 1, SECONDS))
            many = asyncio.run(_opens(path, 64, SECONDS))
            rows += [
                ("opens/s, 1 connection", f"{one:.0f}"),
                ("opens/s, 64 connections", f"{many:.0f}"),
                ("64 connections vs 1", f"{many / one:.2f}x"),
            ]
            alone = _latencies(path, SECONDS)
            loaded = _beside(path, env, "--big-client")
            spun = _beside(path, env, "--spin")
            p99_alone, p99_loaded = _percentile(alone, 0.99), _percentile(loaded, 0.99)
            rows += [
                ("small open alone, median / p99 ms",
                 f"{_percentile(alone, 0.5):.2f} / {p99_alone:.2f}"),
                ("small open beside 8 MiB seal+open, median / p99 ms",
                 f"{_percentile(loaded, 0.5):.2f} / {p99_loaded:.2f}"),
                ("p99 beside 8 MiB vs alone", f"{p99_loaded / p99_alone:.2f}x"),
                ("max beside 8 MiB, ms", f"{loaded[-1]:.1f}"),
                ("small open beside a spinning core, median / p99 ms",
                 f"{_percentile(spun, 0.5):.2f} / {_percentile(spun, 0.99):.2f}"),
                ("p99 beside a spinning core vs alone (the floor)",
                 f"{_percentile(spun, 0.99) / p99_alone:.2f}x"),
            ]  # fmt: skip
    print(f"\n{'agent under load (RSA-4096, ' + str(os.cpu_count()) + ' cores)':<52} {'':>16}")
    print("-" * 70)
    for name, value in rows:
        print(f"{name:<52} {value:>16}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--big-client"]:
        _big_client(sys.argv[2])
    elif sys.argv[1:2] == ["--spin"]:
        _spinner()
    else:
        main()
