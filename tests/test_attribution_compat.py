"""Attribution across versions, end to end: a client that names its app (as nomyo-proxy does)
against an agent from before the ``app`` capability still works, unattributed.

The older agent is the real agent behind a relay that speaks exactly as an older one would: it
decodes every request with the older, strict ``Seal``/``Open`` (unknown fields refused, so an
``app`` field earns a ``bad_request`` as it would there) and leaves ``app`` out of the
capabilities it announces. The other direction (older clients, newer agent) is every other test:
a client that names no app sends the older bytes (tests/test_protocol.py pins that).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from nomyo_agent import protocol as p
from nomyo_client import RetryPolicy
from nomyo_client import _wire as wire
from nomyo_client._agent import AgentLink
from nomyo_client._engine import Engine
from nomyo_client._errors import AgentError
from support.agent import RunningAgent
from support.devserver import RunningDevServer


class _OldSeal(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="seal"):
    origin: str
    router_key_pem: str
    plaintext: bytes


class _OldOpen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="open"):
    package: bytes


def _older_agent_accepts(body: bytes) -> bool:
    op = msgspec.msgpack.decode(body).get("op")
    if op not in ("seal", "open"):
        return True
    try:
        msgspec.msgpack.decode(body, type=_OldSeal if op == "seal" else _OldOpen)
    except msgspec.ValidationError:
        return False
    return True


async def _pump_requests(
    client: asyncio.StreamReader, agent: asyncio.StreamWriter, answer: asyncio.StreamWriter
) -> None:
    reader = p.FrameReader()
    while data := await client.read(65536):
        for body in reader.feed(data):
            if _older_agent_accepts(body):
                agent.write(p.HEADER.pack(len(body)) + body)
            else:  # what an older agent answers to a field it does not know
                answer.write(p.encode_frame(p.Error(code=p.ErrorCode.BAD_REQUEST, message="x")))
    agent.close()


async def _pump_replies(agent: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
    reader = p.FrameReader()
    while data := await agent.read(65536):
        for body in reader.feed(data):
            reply = p.decode_response(body)
            if isinstance(reply, p.HelloReply):
                caps = [c for c in reply.capabilities if c != "app"]
                reply = msgspec.structs.replace(reply, capabilities=caps)
            client.write(p.encode_frame(reply))
    client.close()


@contextlib.asynccontextmanager
async def older_agent(agent: RunningAgent, path: Path) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(agent.path)
        await asyncio.gather(
            _pump_requests(reader, up_writer, writer), _pump_replies(up_reader, writer)
        )

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        yield str(path)
    finally:
        server.close()


@pytest.mark.parametrize("gated", [True, False], ids=["capability-checked", "forced"])
def test_a_client_naming_its_app_works_with_an_older_agent(
    agent: RunningAgent,
    devserver: RunningDevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gated: bool,
) -> None:
    agent.keygen(bits=2048)
    if not gated:  # the negative control: the relay must really refuse a named app

        async def named(self: AgentLink, app: str) -> str:
            return app

        monkeypatch.setattr(AgentLink, "_named", named)

    async def go() -> dict[str, object]:
        async with older_agent(agent, tmp_path / "old.sock") as path:
            engine = Engine(
                allow_http=True,
                retry=RetryPolicy(max_retries=0),
                timeout=30,
                http_client=None,
                agent_socket=path,
                autostart=False,
            )
            try:
                plaintext = wire.build_payload(
                    "devserver/echo", [{"role": "user", "content": "hi"}], {}
                )
                return await engine.send(
                    devserver.url, plaintext, wire.new_payload_id(), None, None, app="editor"
                )
            finally:
                await engine.aclose()

    if not gated:
        with pytest.raises(AgentError):
            asyncio.run(go())
        return
    answer = asyncio.run(go())
    assert answer["choices"]
    names = [c.exe for c in agent.status().recent_clients]
    assert names
    assert not any("editor" in n for n in names)  # served, but the older agent knows no apps
