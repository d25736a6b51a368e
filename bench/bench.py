"""``./dev bench``: ours against the public ``nomyo==0.2.9`` client, side by side, one table.

Both clients run the same measuring program in their own fresh interpreters (ours from this
venv, the public one from ``NOMYO_PEER_PYTHON``) against one ``nomyo-devserver`` with the echo
model and an RSA-4096 key, in one run:

- sequential requests with a 4 KiB prompt on one client instance: median and p90 latency;
- 16 concurrent requests on one instance, several rounds: throughput;
- a new process's time from start to its first answer (ours: the agent already unlocked; the
  public client: its default, a fresh RSA-4096 key per process, and with a saved ``key_dir``);
- ``import`` time of each package alone;
- every failed request is counted; any failure makes the exit status 1.

The bench sets up its own agent (temp socket, temp XDG folders, its own private D-Bus and
gnome-keyring, as ``nomyo_devserver.demo`` does) and devserver, so it runs on a fresh machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nomyo_devserver import DevServer
from nomyo_devserver.demo import DemoError, throwaway_agent, throwaway_session

ROOT = Path(__file__).resolve().parents[1]
MODEL = "devserver/echo"

# Runs in a fresh interpreter of either side; config as JSON in argv[1]; one JSON line out.
PROGRAM = r"""
import asyncio, json, sys, time
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
if cfg["side"] == "ours":
    from nomyo_client import SecureChatCompletion
else:
    from nomyo import SecureChatCompletion
import_s = time.perf_counter() - t0
if cfg["mode"] == "import":
    print(json.dumps({"import": import_s}), flush=True)
    sys.exit(0)

async def main():
    extra = {"key_dir": cfg["key_dir"]} if cfg.get("key_dir") else {}
    client = SecureChatCompletion(base_url=cfg["url"], allow_http=True, **extra)
    messages = [{"role": "user", "content": cfg["prompt"]}]
    out = {"latencies": [], "failures": 0, "errors": [], "rounds": []}

    async def one():
        started = time.perf_counter()
        try:
            answer = await client.create(model=cfg["model"], messages=messages)
            ok = answer["choices"][0]["message"]["content"].startswith("echo")
        except Exception as exc:
            ok = False
            out["errors"].append(repr(exc)[:300])
        if ok:
            out["latencies"].append(time.perf_counter() - started)
        else:
            out["failures"] += 1

    if cfg["mode"] == "first":
        await one()
        print(json.dumps(out), flush=True)
        return
    for _ in range(cfg["warmup"]):
        await one()
    out["latencies"].clear()
    if cfg["mode"] == "seq":
        for _ in range(cfg["n"]):
            await one()
    else:
        for _ in range(cfg["rounds"]):
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(cfg["concurrency"])))
            out["rounds"].append(time.perf_counter() - started)
    if hasattr(client, "aclose"):
        await client.aclose()
    print(json.dumps(out), flush=True)

asyncio.run(main())
"""


def peer_python() -> str:
    path = os.environ.get("NOMYO_PEER_PYTHON") or str(ROOT / ".venv-nomyo" / "bin" / "python")
    if not Path(path).is_file():
        raise DemoError(f"the public client's python is missing at {path}", "run `./dev setup`")
    return path


class Side:
    """One client: its interpreter, its environment, its results."""

    def __init__(self, name: str, python: str, env: dict[str, str]) -> None:
        self.name = name
        self.python = python
        self.env = env
        self.failures = 0
        self.requests = 0
        self.errors: list[str] = []

    def run(self, timeout: float = 120.0, **cfg: Any) -> tuple[dict[str, Any], float]:
        """Run PROGRAM once; returns its JSON and the seconds from spawn to its first line."""
        cfg["side"] = "ours" if self.name == "ours" else "public"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [self.python, "-c", PROGRAM, json.dumps(cfg)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        first_line = time.perf_counter() - started
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not line.strip():
            raise RuntimeError(f"{self.name} client failed:\n{err[-3000:]}")
        out: dict[str, Any] = json.loads(line)
        if "failures" in out:
            self.failures += out["failures"]
            self.requests += out["failures"] + len(out["latencies"])
            self.errors += out["errors"]
        return out, first_line


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def measure(url: str, ours: Side, public: Side, key_dir: str, args: argparse.Namespace) -> None:
    prompt = ("The quick brown fox jumps over the lazy dog. " * 100)[:4096]
    common = {"url": url, "model": MODEL, "prompt": prompt}
    rows: list[tuple[str, str, str, str]] = []

    def row(what: str, theirs: float, mine: float, unit: str, lower_is_better: bool = True) -> None:
        ratio = mine / theirs if theirs else float("nan")
        fmt = _ms if unit == "ms" else (lambda v: f"{v:.0f} req/s")
        better = f"{ratio:.2f}x" if lower_is_better else f"{ratio:.1f}x"
        rows.append((what, fmt(theirs), fmt(mine), better))

    # Each side runs in turns (public, ours, public, ours, ...), so that load from anything else
    # on the machine falls on both alike.
    print("measuring: sequential ...", file=sys.stderr, flush=True)
    seq: dict[str, list[float]] = {"public": [], "ours": []}
    rounds: dict[str, list[float]] = {"public": [], "ours": []}
    for _ in range(args.turns):
        for side in (public, ours):
            extra = {"key_dir": key_dir} if side is public else {}
            out, _ = side.run(mode="seq", n=args.n // args.turns, warmup=3, **common, **extra)
            seq[side.name] += out["latencies"]
    row("sequential 4 KiB, median", statistics.median(seq["public"]),
        statistics.median(seq["ours"]), "ms")  # fmt: skip
    row("sequential 4 KiB, p90", _p90(seq["public"]), _p90(seq["ours"]), "ms")

    print("measuring: concurrent ...", file=sys.stderr, flush=True)
    for _ in range(args.turns):
        for side in (public, ours):
            extra = {"key_dir": key_dir} if side is public else {}
            out, _ = side.run(mode="conc", concurrency=16, rounds=args.rounds // args.turns,
                              warmup=1, **common, **extra)  # fmt: skip
            rounds[side.name] += out["rounds"]
    tput = {name: 16 * len(times) / sum(times) for name, times in rounds.items()}
    row("16 concurrent, throughput", tput["public"], tput["ours"], "rps", lower_is_better=False)

    print("measuring: new process to first answer ...", file=sys.stderr, flush=True)
    first: dict[str, list[float]] = {"ours": [], "public": [], "public-keydir": []}
    for _ in range(args.processes):
        first["ours"].append(ours.run(mode="first", **common)[1])
        first["public"].append(public.run(mode="first", **common)[1])
        first["public-keydir"].append(public.run(mode="first", key_dir=key_dir, **common)[1])
    mine = statistics.median(first["ours"])
    row("new process to 1st answer", statistics.median(first["public"]), mine, "ms")
    row("  (public with saved key_dir)", statistics.median(first["public-keydir"]), mine, "ms")

    print("measuring: import time ...", file=sys.stderr, flush=True)
    imports = {
        side.name: statistics.median(side.run(mode="import")[0]["import"] for _ in range(5))
        for side in (public, ours)
    }
    row("import alone", imports["public"], imports["ours"], "ms")

    failed = f"{public.failures} of {public.requests}", f"{ours.failures} of {ours.requests}"
    rows.append(("failed requests", *failed, ""))

    widths = [max(len(r[i]) for r in [*rows, _HEAD]) for i in range(4)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(line)
    for i, r in enumerate([_HEAD, *rows]):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=False))
        ]
        print("| " + " | ".join(cells) + " |")
        if i == 0:
            print(line)
    print(line)
    print(
        f"devserver echo model, RSA-4096 router and client keys, {os.cpu_count()} CPUs; "
        f"sequential n={args.n}, concurrent {args.rounds}x16, {args.processes} new processes, "
        f"in {args.turns} alternating turns; "
        "ratio = ours / public (throughput: higher is better)"
    )
    for side in (public, ours):
        for error in side.errors[:3]:
            print(f"{side.name} failure: {error}", file=sys.stderr)


_HEAD = ("measurement", "public nomyo 0.2.9", "nomyo_client (agent)", "ratio")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60, help="sequential requests (default 60)")
    parser.add_argument("--rounds", type=int, default=9, help="concurrent rounds of 16")
    parser.add_argument("--turns", type=int, default=3, help="alternations between the sides")
    parser.add_argument("--processes", type=int, default=7, help="new-process samples")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="nomyo-bench-") as tmp:
            print("setting up: private bus + keyring, agent, devserver ...", file=sys.stderr)
            with throwaway_session(Path(tmp)) as session, throwaway_agent(session) as agent:
                env = {**agent.env, "NOMYO_AGENT_AUTOSTART": "0", "PYTHONWARNINGS": "ignore"}
                ours = Side("ours", sys.executable, env)
                public = Side("public", peer_python(), env)
                key_dir = Path(tmp) / "client_keys"
                # The public client makes and saves a key here once (its documented key_dir).
                public.run(mode="first", key_dir=str(key_dir), url="http://127.0.0.1:9",
                           model=MODEL, prompt="x")  # fmt: skip
                public.failures = public.requests = 0
                public.errors.clear()
                with DevServer(key_bits=4096) as server:
                    measure(server.url, ours, public, str(key_dir), args)
    except DemoError as exc:
        print(f"bench: error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 2
    print(f"(took {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 1 if ours.failures or public.failures else 0


if __name__ == "__main__":
    sys.exit(main())
