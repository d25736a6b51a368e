"""``./dev demo``: the whole main job on this machine, with no account and no network.

It starts a private D-Bus session with its own gnome-keyring (so your real keyring is never
touched), a ``nomyo-agent`` with a throwaway RSA-4096 identity, and the local devserver; sends an
encrypted chat through ``nomyo_client``; prints the answer and what crossed the wire; and removes
everything again. The session and the agent come from ``nomyo_devserver.session`` and
``.agents``, the harness the tests and the bench use too.

Rules of this module: every process it starts is stopped and every folder removed, also on
errors and Ctrl-C; a missing system program fails with a hint saying what to install.

Run it with ``python -m nomyo_devserver.demo [--bits 2048]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from nomyo_agent import protocol as p
from nomyo_client import Answer
from nomyo_client._h11pool import H11Pool
from nomyo_devserver._devserver import DevServer
from nomyo_devserver.agents import AgentProcess, open_agent
from nomyo_devserver.session import SessionError, open_session

__all__ = ["main"]


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


async def _chat(agent: AgentProcess, router: DevServer, prompt: str) -> dict[str, Any]:
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
        with open_session(Path(tmp)) as session:
            print(f"[2/4] nomyo-agent with a throwaway RSA-{bits} identity", file=out)
            t = time.perf_counter()
            with open_agent(session.env, bits=bits) as agent:
                identity = agent.identity
                assert identity is not None  # open_agent made it
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
    print(f"  your identity   {identity.fingerprint}  (RSA-{identity.bits}, in the agent)")
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
    except SessionError as exc:
        print(f"demo: error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
