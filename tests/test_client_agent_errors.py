"""How the client words a broken agent connection: one cause, said once."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import nomyo_client as nc
from nomyo_agent import protocol as p
from support.client_fakes import ScriptedRouter


def _read_frame(conn: socket.socket) -> bytes:
    header = conn.recv(4, socket.MSG_WAITALL)
    (n,) = struct.unpack(">I", header)
    return conn.recv(n, socket.MSG_WAITALL)


@pytest.fixture
def resetting_agent(tmp_path: Path) -> Iterator[str]:
    """An agent that answers Hello, then resets the connection on the next request: it reads
    only that request's header and closes with the body unread, which the kernel reports to the
    client as ECONNRESET (an OSError, not a clean end of stream)."""
    path = str(tmp_path / "agent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                _read_frame(conn)
                hello = p.HelloReply(protocol=p.PROTOCOL_VERSION, agent_version="x",
                                     capabilities=[], pid=1)  # fmt: skip
                conn.sendall(p.encode_frame(hello))
                conn.recv(4, socket.MSG_WAITALL)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(timeout=10)


def test_a_reset_agent_connection_is_reported_once_without_repeating_itself(
    resetting_agent: str,
) -> None:
    client = nc.SecureChatCompletion(
        "https://router.test", http_client=ScriptedRouter().client(),
        agent_socket=resetting_agent, autostart=False,
    )  # fmt: skip
    big = "x" * 256 * 1024  # far more than the agent reads, so its close is a reset

    async def go() -> None:
        async with client:
            await client.create(model="m", messages=[{"role": "user", "content": big}])

    with pytest.raises(nc.AgentError) as info:
        asyncio.run(go())
    message = info.value.message
    assert "lost the agent connection" in message, message
    assert message.count("lost the agent connection") == 1, message
    assert message.count("agent") <= 2, message
