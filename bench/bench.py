"""``./dev bench``: ours against the public ``nomyo==0.2.9`` client, side by side, one table.

Both clients run the same measuring program in their own fresh interpreters (ours from this
venv, the public one from ``NOMYO_PEER_PYTHON``) against one ``nomyo-devserver`` with the echo
model and an RSA-4096 key, in one run:

- sequential requests with a 4 KiB prompt on one client instance: median and p90 latency;
- 16 concurrent requests on one instance, several rounds: throughput;
- a new process's time from start to its first answer (ours: the agent already unlocked; the
  public client: its default, a fresh RSA-4096 key per process, and with a saved ``key_dir``);
- ``import`` time of each package alone;
- nomyo-proxy: the same sequential and concurrent runs with the official ``openai`` SDK through
  the proxy, against ``SecureChatCompletion`` on the same router in the same run, plus where
  the time goes: the CPU each process spends per request (app, proxy, agent, router) and the
  share of the sequential budget that the SDK itself takes;
- every failed request is counted; any failure makes the exit status 1.

The bench sets up its own agent (temp socket, temp XDG folders, its own private D-Bus and
gnome-keyring, as ``nomyo_devserver.demo`` does) and devserver, so it runs on a fresh machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nomyo_devserver import DevServer
from nomyo_devserver.agents import open_agent
from nomyo_devserver.session import SessionError, open_session

ROOT = Path(__file__).resolve().parents[1]
MODEL = "devserver/echo"

# Runs in a fresh interpreter of either side; config as JSON in argv[1]; one JSON line out.
PROGRAM = r"""
import asyncio, json, sys, time
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
if cfg["side"] == "ours":
    from nomyo_client import SecureChatCompletion
elif cfg["side"] == "proxy":
    from openai import AsyncOpenAI
elif cfg["side"] == "raw":
    import http.client
else:
    from nomyo import SecureChatCompletion
import_s = time.perf_counter() - t0
if cfg["mode"] == "import":
    print(json.dumps({"import": import_s}), flush=True)
    sys.exit(0)

async def main():
    messages = [{"role": "user", "content": cfg["prompt"]}]
    if cfg["side"] == "proxy":  # the official openai SDK, through nomyo-proxy
        client = AsyncOpenAI(base_url=cfg["proxy_url"], api_key=cfg["token"], max_retries=0)

        async def create():
            answer = await client.chat.completions.create(model=cfg["model"], messages=messages)
            return answer.choices[0].message.content
        client.aclose = client.close
    elif cfg["side"] == "raw":  # one keep-alive connection, no SDK: the proxy's own share
        host, port = cfg["proxy_url"].removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
        client = http.client.HTTPConnection(host, int(port))
        body = json.dumps({"model": cfg["model"], "messages": messages})
        headers = {"Authorization": "Bearer " + cfg["token"], "Content-Type": "application/json"}

        async def create():
            client.request("POST", "/v1/chat/completions", body, headers)
            return json.loads(client.getresponse().read())["choices"][0]["message"]["content"]
    else:
        extra = {"key_dir": cfg["key_dir"]} if cfg.get("key_dir") else {}
        client = SecureChatCompletion(base_url=cfg["url"], allow_http=True, **extra)

        async def create():
            answer = await client.create(model=cfg["model"], messages=messages)
            return answer["choices"][0]["message"]["content"]
    out = {"latencies": [], "failures": 0, "errors": [], "rounds": []}

    async def one():
        started = time.perf_counter()
        try:
            ok = (await create()).startswith("echo")
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
    cpu_started = time.process_time()
    if cfg["mode"] == "seq":
        for _ in range(cfg["n"]):
            await one()
    else:
        for _ in range(cfg["rounds"]):
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(cfg["concurrency"])))
            out["rounds"].append(time.perf_counter() - started)
    out["cpu"] = time.process_time() - cpu_started
    if hasattr(client, "aclose"):
        await client.aclose()
    print(json.dumps(out), flush=True)

asyncio.run(main())
"""


def peer_python() -> str:
    path = os.environ.get("NOMYO_PEER_PYTHON") or str(ROOT / ".venv-nomyo" / "bin" / "python")
    if not Path(path).is_file():
        raise SessionError(f"the public client's python is missing at {path}", "run `./dev setup`")
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
        self.extra: dict[str, str] = {}

    def bind(self, proxy_url: str, token: str) -> Side:
        """The proxy side: every run talks to ``proxy_url`` with ``token``."""
        self.extra = {"proxy_url": proxy_url, "token": token}
        return self

    def run(self, timeout: float = 120.0, **cfg: Any) -> tuple[dict[str, Any], float]:
        """Run PROGRAM once; returns its JSON and the seconds from spawn to its first line."""
        cfg.update(self.extra)
        cfg["side"] = self.name if self.name in ("ours", "proxy", "raw") else "public"
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


def _row(
    rows: list[tuple[str, str, str, str]], what: str, theirs: float, mine: float, unit: str,
    *, lower_is_better: bool = True,
) -> None:  # fmt: skip
    ratio = mine / theirs if theirs else float("nan")
    fmt = _ms if unit == "ms" else (lambda v: f"{v:.0f} req/s")
    better = f"{ratio:.2f}x" if lower_is_better else f"{ratio:.1f}x"
    rows.append((what, fmt(theirs), fmt(mine), better))


def measure(
    url: str,
    ours: Side,
    public: Side,
    key_dir: str,
    args: argparse.Namespace,
    *,
    proxy: Side,
    raw: Side,
    meter: CpuMeter,
) -> None:
    prompt = ("The quick brown fox jumps over the lazy dog. " * 100)[:4096]
    common: dict[str, Any] = {"url": url, "model": MODEL, "prompt": prompt}
    rows: list[tuple[str, str, str, str]] = []
    proxy_rows: list[tuple[str, str, str, str]] = []

    def row(what: str, theirs: float, mine: float, unit: str, lower_is_better: bool = True) -> None:
        _row(rows, what, theirs, mine, unit, lower_is_better=lower_is_better)

    # Each side runs in turns (public, ours, proxy, public, ...), so that load from anything else
    # on the machine falls on all alike; the proxy's rows compare it with ours, same router.
    print("measuring: sequential ...", file=sys.stderr, flush=True)
    seq: dict[str, list[float]] = {"public": [], "ours": [], "proxy": [], "raw": []}
    rounds: dict[str, list[float]] = {"public": [], "ours": [], "proxy": []}
    for _ in range(args.turns):
        for side in (public, ours, proxy, raw):
            extra: dict[str, Any] = {"key_dir": key_dir} if side is public else {}
            out, _ = side.run(mode="seq", n=args.n // args.turns, warmup=3, **common, **extra)
            seq[side.name] += out["latencies"]
    row("sequential 4 KiB, median", statistics.median(seq["public"]),
        statistics.median(seq["ours"]), "ms")  # fmt: skip
    row("sequential 4 KiB, p90", _p90(seq["public"]), _p90(seq["ours"]), "ms")
    _row(proxy_rows, "sequential 4 KiB, median", statistics.median(seq["ours"]),
         statistics.median(seq["proxy"]), "ms")  # fmt: skip
    _row(proxy_rows, "sequential 4 KiB, p90", _p90(seq["ours"]), _p90(seq["proxy"]), "ms")
    _row(proxy_rows, "  (no SDK: http.client, median)", statistics.median(seq["ours"]),
         statistics.median(seq["raw"]), "ms")  # fmt: skip

    print("measuring: concurrent ...", file=sys.stderr, flush=True)
    per_turn = args.rounds // args.turns
    for _ in range(args.turns):
        for side in (public, ours, proxy):
            extra = {"key_dir": key_dir} if side is public else {}
            out = meter.run(side, 16 * per_turn, 16, mode="conc", concurrency=16,
                            rounds=per_turn, warmup=1, **common, **extra)  # fmt: skip
            rounds[side.name] += out["rounds"]
    tput = {name: 16 * len(times) / sum(times) for name, times in rounds.items()}
    row("16 concurrent, throughput", tput["public"], tput["ours"], "rps", lower_is_better=False)
    _row(proxy_rows, "16 concurrent, throughput", tput["ours"], tput["proxy"], "rps",
         lower_is_better=False)  # fmt: skip

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
    proxied = f"{proxy.failures + raw.failures} of {proxy.requests + raw.requests}"
    proxy_rows.append(("failed requests", "", proxied, ""))

    _table(_HEAD, rows)
    print(
        f"devserver echo model, RSA-4096 router and client keys, {os.cpu_count()} CPUs; "
        f"sequential n={args.n}, concurrent {args.rounds}x16, {args.processes} new processes, "
        f"in {args.turns} alternating turns; "
        "ratio = ours / public (throughput: higher is better)"
    )
    _table(_PROXY_HEAD, proxy_rows)
    print("targets: sequential median at most 1.15x, throughput at least 0.9x (docs/proxy.md)")
    _table(_CPU_HEAD, meter.rows(ours.name, proxy.name))
    for line in _shares(seq, meter, ours.name, proxy.name, raw.name):
        print(line)
    for side in (public, ours, proxy, raw):
        for error in side.errors[:3]:
            print(f"{side.name} failure: {error}", file=sys.stderr)


def _table(head: tuple[str, str, str, str], rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(4)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(line)
    for i, r in enumerate([head, *rows]):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=False))
        ]
        print("| " + " | ".join(cells) + " |")
        if i == 0:
            print(line)
    print(line)


_HEAD = ("measurement", "public nomyo 0.2.9", "nomyo_client (agent)", "ratio")
_PROXY_HEAD = ("nomyo-proxy", "SecureChatCompletion", "openai SDK via proxy", "ratio")
_CPU_HEAD = ("CPU per request, 16 concurrent", "SecureChatCompletion", "openai SDK via proxy", "")


def _cpu_of(pid: int) -> float:
    """A process's CPU seconds so far (user + system), from the kernel's accounting (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Where a request's CPU goes: the app (its own measure of the counted requests), the proxy
    and the agent (their processes' accounting over the whole run, warm-up included), and the
    router (the devserver runs in this process, which otherwise only waits)."""

    PARTS = ("app", "nomyo-proxy", "agent", "router (devserver)")

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.spent: dict[str, dict[str, float]] = {}
        self.served: dict[str, tuple[int, int]] = {}  # side -> (counted, counted + warm-up)

    def _now(self) -> dict[str, float]:
        return {"router (devserver)": time.process_time()} | {
            name: _cpu_of(pid) for name, pid in self.pids.items()
        }

    def run(self, side: Side, counted: int, uncounted: int, **cfg: Any) -> dict[str, Any]:
        before = self._now()
        out, _ = side.run(**cfg)
        after = self._now()
        spent = self.spent.setdefault(side.name, dict.fromkeys(self.PARTS, 0.0))
        for name, value in after.items():
            spent[name] += value - before[name]
        spent["app"] += out["cpu"]
        done, everything = self.served.get(side.name, (0, 0))
        self.served[side.name] = (done + counted, everything + counted + uncounted)
        return out

    def per_request(self, side: str) -> dict[str, float]:
        counted, everything = self.served[side]
        return {
            name: value / (counted if name == "app" else everything)
            for name, value in self.spent[side].items()
        }

    def rows(self, library: str, proxied: str) -> list[tuple[str, str, str, str]]:
        lib, via = self.per_request(library), self.per_request(proxied)
        rows = [
            (name, "-" if name == "nomyo-proxy" else _ms(lib[name]), _ms(via[name]), "")
            for name in self.PARTS
        ]
        lib_total = sum(v for k, v in lib.items() if k != "nomyo-proxy")
        via_total = sum(via.values())
        cores = os.cpu_count() or 1
        rows.append(("total", _ms(lib_total), _ms(via_total), f"{lib_total / via_total:.2f}x"))
        rows.append((f"  ({cores} cores / total)", f"{cores / lib_total:.0f} req/s",
                     f"{cores / via_total:.0f} req/s", ""))  # fmt: skip
        return rows


def _shares(
    seq: dict[str, list[float]], meter: CpuMeter, library: str, proxied: str, raw: str
) -> list[str]:
    """The budgets the targets leave, against what the proxy and the SDK take of them."""
    lib, sdk, bare = (statistics.median(seq[name]) for name in (library, proxied, raw))
    via, ours = meter.per_request(proxied), meter.per_request(library)
    lib_total = sum(v for k, v in ours.items() if k != "nomyo-proxy")
    without_proxy = sum(v for k, v in via.items() if k != "nomyo-proxy")
    return [
        f"sequential: 1.15x leaves {_ms(0.15 * lib)} over the library's {_ms(lib)}; the proxy's "
        f"hop took {_ms(bare - lib)} (http.client, no SDK), the SDK's own work {_ms(sdk - bare)} "
        "more (SDK minus http.client through the same proxy)",
        f"16 concurrent: bound by CPU here, the proxied path spends {_ms(sum(via.values()))} per "
        f"request against the library's {_ms(lib_total)}; with a proxy that cost nothing it would "
        f"still be {_ms(without_proxy)}, {lib_total / without_proxy:.2f}x, since the SDK spends "
        f"{_ms(via['app'])} where the library spends {_ms(ours['app'])}",
    ]


@contextlib.contextmanager
def running_proxy(url: str, env: dict[str, str], folder: Path) -> Iterator[tuple[str, str, int]]:
    """``nomyo-proxy serve`` in front of the devserver; yields its base URL, a fresh token and
    its pid."""
    script = str(Path(sys.executable).parent / "nomyo-proxy")
    token = subprocess.run(
        [script, "token", "create", "bench"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    log = folder / "proxy.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [script, "serve", "--listen", "127.0.0.1:0", "--router", url, "--allow-http"],
            env=env, stdout=subprocess.PIPE, stderr=fh, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(b"NOMYO_PROXY_URL="):
            raise SessionError(f"nomyo-proxy did not start:\n{log.read_text()}", "see its log")
        yield line.decode().strip().split("=", 1)[1], token, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


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
            with open_session(Path(tmp)) as session, open_agent(session.env) as agent:
                env = {**agent.env, "NOMYO_AGENT_AUTOSTART": "0", "PYTHONWARNINGS": "ignore"}
                ours = Side("ours", sys.executable, env)
                public = Side("public", peer_python(), env)
                key_dir = Path(tmp) / "client_keys"
                # The public client makes and saves a key here once (its documented key_dir).
                public.run(mode="first", key_dir=str(key_dir), url="http://127.0.0.1:9",
                           model=MODEL, prompt="x")  # fmt: skip
                public.failures = public.requests = 0
                public.errors.clear()
                with (
                    DevServer(key_bits=4096) as server,
                    running_proxy(server.url, env, Path(tmp)) as (proxy_url, token, pid),
                ):
                    proxy = Side("proxy", sys.executable, env).bind(proxy_url, token)
                    raw = Side("raw", sys.executable, env).bind(proxy_url, token)
                    meter = CpuMeter({"nomyo-proxy": pid, "agent": agent.pid})
                    measure(server.url, ours, public, str(key_dir), args, proxy=proxy, raw=raw,
                            meter=meter)  # fmt: skip
    except SessionError as exc:
        print(f"bench: error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 2
    print(f"(took {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 1 if ours.failures or public.failures or proxy.failures or raw.failures else 0


if __name__ == "__main__":
    sys.exit(main())
