"""``./dev demo``: the whole main job on this machine, with no account and no network.

It starts a private D-Bus session with its own gnome-keyring (so your real keyring is never
touched), a ``nomyo-agent`` with a throwaway RSA-4096 identity, and the local devserver; sends an
encrypted chat through ``nomyo_client``; prints the answer and what crossed the wire; and removes
everything again. ``throwaway_session`` and ``throwaway_agent`` are reused by ``bench/bench.py``.

Rules of this module: every process it starts is stopped and every folder removed, also on
errors and Ctrl-C; a missing system program fails with a hint saying what to install.

Run it with ``python -m nomyo_devserver.demo [--bits 2048]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nomyo_agent import protocol as p
from nomyo_agent.connection import AgentConnection
from nomyo_client import Answer
from nomyo_client._h11pool import H11Pool
from nomyo_devserver._devserver import DevServer

__all__ = ["DemoError", "ThrowawayAgent", "main", "throwaway_agent", "throwaway_session"]

_PROGRAMS = ("dbus-daemon", "gnome-keyring-daemon", "dbus-send")
_LEAKY_ENV = ("DBUS_", "XDG_", "DISPLAY", "WAYLAND_", "NOMYO_", "GNOME_KEYRING", "SSH_AUTH")


class DemoError(Exception):
    """A set-up step failed; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _stop(proc: subprocess.Popen[bytes], group: bool = True) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait()


def _secrets_ready(env: dict[str, str]) -> bool:
    out = subprocess.run(
        ["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
         "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
         "string:org.freedesktop.secrets"],
        env=env, capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    return "boolean true" in out.stdout


@contextlib.contextmanager
def throwaway_session(root: Path) -> Iterator[dict[str, str]]:
    """Private HOME/XDG folders under ``root``, a session bus and an unlocked gnome-keyring.

    Yields the environment every child must get (the bus starts services with its own).
    """
    missing = [name for name in _PROGRAMS if shutil.which(name) is None]
    if missing:
        raise DemoError(
            f"missing system programs: {', '.join(missing)}",
            "run `./dev setup` (as root on Debian), or `apt install dbus gnome-keyring`",
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_ENV)}
    home = root / "home"
    folders = {
        "HOME": home,
        "XDG_RUNTIME_DIR": root / "run",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_STATE_HOME": home / ".local" / "state",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    env.update({k: str(v) for k, v in folders.items()})
    env["NO_AT_BRIDGE"] = "1"
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.SecretService.Keyring"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        procs.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        bus.stdout.close()
        if not address:
            raise DemoError("dbus-daemon did not start", "run `dbus-daemon --session` to see why")
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        keyring = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        procs.append(keyring)
        assert keyring.stdin is not None
        keyring.stdin.write(secrets.token_urlsafe(16).encode())  # a throwaway login password
        keyring.stdin.close()
        deadline = time.monotonic() + 10
        while not _secrets_ready(env):
            if time.monotonic() > deadline:
                raise DemoError(
                    "gnome-keyring did not offer a Secret Service within 10 s",
                    "check that gnome-keyring-daemon runs: `gnome-keyring-daemon --version`",
                )
            time.sleep(0.02)
        yield env
    finally:
        for proc in reversed(procs):
            _stop(proc)


@dataclass
class ThrowawayAgent:
    path: str
    pid: int
    env: dict[str, str]
    identity: p.IdentityReply
    proc: subprocess.Popen[bytes] = field(repr=False)

    def call(self, request: p.Request, expect: type[Any]) -> Any:
        with AgentConnection.open(self.path, timeout=60) as conn:
            return conn.call(request, expect)


@contextlib.contextmanager
def throwaway_agent(env: dict[str, str], bits: int = 4096) -> Iterator[ThrowawayAgent]:
    """A ``nomyo-agent serve`` on a socket in the session's runtime folder, with a new identity
    (no passphrase, stored in the session's keyring), unlocked and ready."""
    env = dict(env)
    path = str(Path(env["XDG_RUNTIME_DIR"]) / "nomyo-agent" / "agent.sock")
    env["NOMYO_AGENT_SOCK"] = path
    log = Path(env["HOME"]) / "agent.log"
    read_fd, write_fd = os.pipe()
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "nomyo_agent", "serve", "--ready-fd", str(write_fd)],
            env=env, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
            pass_fds=(write_fd,), start_new_session=True,
        )  # fmt: skip
    os.close(write_fd)
    try:
        got = b""
        deadline = time.monotonic() + 20
        os.set_blocking(read_fd, False)
        while not got.endswith(b"\n"):
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                raise DemoError(f"the agent did not start: {tail or 'no output'}", f"see {log}")
            try:
                chunk = os.read(read_fd, 64)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            got += chunk
            if not chunk:
                time.sleep(0.01)
        with AgentConnection.open(path, timeout=120) as conn:
            identity = conn.call(p.Generate(bits=bits, passphrase=b"", force=True), p.IdentityReply)
        yield ThrowawayAgent(path=path, pid=proc.pid, env=env, identity=identity, proc=proc)
    finally:
        os.close(read_fd)
        _stop(proc)


def _pem_fingerprint(pem: str) -> str:
    """SHA-256 of a public key PEM's DER body, as the agent shows fingerprints."""
    import base64  # noqa: PLC0415 - only here

    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return hashlib.sha256(base64.b64decode(body)).hexdigest()


class _Wire(H11Pool):
    """The client's own HTTP pool, noting what each exchange sent and got."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, int, int, int, float]] = []
        self.public_keys: list[str] = []  # the X-Public-Key headers, decoded

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        limit: int | None = None,
    ) -> Answer:
        started = time.perf_counter()
        answer = await super().request(method, url, body, headers, limit=limit)
        took = time.perf_counter() - started
        if "X-Public-Key" in headers:
            self.public_keys.append(urllib.parse.unquote(headers["X-Public-Key"]))
        sent = len(body or b"") + sum(len(k) + len(v) + 4 for k, v in headers.items())
        received = len(answer.content) + sum(len(k) + len(v) + 4 for k, v in answer.headers.items())
        path = urllib.parse.urlsplit(url).path
        self.rows.append((method, path, sent, answer.status_code, received, took))
        return answer


async def _chat(agent: ThrowawayAgent, router: DevServer, prompt: str) -> dict[str, Any]:
    from nomyo_client import SecureChatCompletion  # noqa: PLC0415 - after the set-up

    wire = _Wire()
    messages = [{"role": "user", "content": prompt}]
    async with SecureChatCompletion(
        router.url,
        allow_http=True,
        agent_socket=agent.path,
        autostart=False,
        http_client=wire,  # our own pool, recording
    ) as client:
        started = time.perf_counter()
        first = await client.create(model="devserver/echo", messages=messages)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        await client.create(model="devserver/echo", messages=messages)
        warm = time.perf_counter() - started
    await wire.aclose()
    sent_key = wire.public_keys[0] if wire.public_keys else ""
    return {"answer": first, "wire": wire.rows, "cold": cold, "warm": warm, "sent_key": sent_key}


_REAL_ROUTER = """\
The same client against a real router (your key stays in your own agent):

    nomyo-agent keygen                 # once: a 4096-bit identity in your OS keyring
    export NOMYO_API_KEY=...           # if your router wants one

    from nomyo_client import SecureChatCompletion      # was: from nomyo import ...
    client = SecureChatCompletion(base_url="https://api.nomyo.ai",
                                  api_key=os.environ.get("NOMYO_API_KEY"))
    answer = await client.create(model="Qwen/Qwen3-0.6B",
                                 messages=[{"role": "user", "content": "Hello"}])

    or from a shell:  nomyo-chat -m Qwen/Qwen3-0.6B "Hello"
    (a local model instead: nomyo-devserver --upstream http://127.0.0.1:11434/v1)"""


def run(bits: int, prompt: str) -> None:
    out = sys.stdout
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nomyo-demo-") as tmp:
        print(f"[1/4] private session bus + gnome-keyring in {tmp}", file=out)
        with throwaway_session(Path(tmp)) as env:
            print(f"[2/4] nomyo-agent with a throwaway RSA-{bits} identity", file=out)
            t = time.perf_counter()
            with throwaway_agent(env, bits=bits) as agent:
                keygen = time.perf_counter() - t
                print("[3/4] nomyo-devserver (echo model) with its own RSA key", file=out)
                with DevServer(key_bits=bits) as router:
                    print(f"[4/4] encrypted chat through nomyo_client -> {router.url}\n", file=out)
                    result = asyncio.run(_chat(agent, router, prompt))
                    pins = agent.call(p.PinsList(), p.PinsReply)
                    status = agent.call(p.Status(), p.StatusReply)
                    router_fp = router.fingerprint
    answer = result["answer"]
    print(f"you:    {prompt}")
    print(f"answer: {answer['choices'][0]['message']['content']}\n")
    print("what crossed the wire (HTTP bodies plus our headers):")
    for method, path, sent, status_code, received, took in result["wire"]:
        print(
            f"  {method:<4} {path:<28} sent {sent:>6} B  got {status_code} {received:>6} B"
            f"  {took * 1000:6.1f} ms"
        )
    pinned = next((pin.fingerprint for pin in pins.pins), "?")
    print("\nkeys:")
    print(
        f"  your identity   {agent.identity.fingerprint}  (RSA-{agent.identity.bits}, in the agent)"
    )
    print(f"  router key      {router_fp}  (pinned on first use: "
          f"{'yes' if pinned == router_fp else 'NO'})")  # fmt: skip
    print(f"  X-Public-Key    {_pem_fingerprint(result['sent_key'])}  (the header as sent)")
    meta = answer["_metadata"]
    print("\nmetadata: " + ", ".join(
        f"{k}={meta[k]}" for k in ("payload_id", "is_encrypted", "encryption_algorithm",
                                   "security_tier") if k in meta))  # fmt: skip
    print("\ntimings:")
    print(f"  identity generated in the agent      {keygen * 1000:7.1f} ms (once per user)")
    print(f"  first chat (connect, fetch key)      {result['cold'] * 1000:7.1f} ms")
    print(f"  next chat (pooled, key cached)       {result['warm'] * 1000:7.1f} ms")
    print(f"  agent sealed {status.counters.seals}, opened {status.counters.opens}; "
          f"the client process never held a key")  # fmt: skip
    print(f"  whole demo incl. set-up and clean-up {time.perf_counter() - t0:7.2f} s\n")
    print(_REAL_ROUTER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nomyo_devserver.demo", description=__doc__)
    parser.add_argument("--bits", type=int, default=4096, choices=(2048, 3072, 4096))
    parser.add_argument("--prompt", default="Is this conversation end-to-end encrypted?")
    args = parser.parse_args(argv)
    try:
        run(args.bits, args.prompt)
    except DemoError as exc:
        print(f"demo: error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
