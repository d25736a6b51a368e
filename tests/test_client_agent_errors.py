"""How the client words what the agent could not do: a broken connection (one cause, said once),
and the agent errors whose names the client's tree shares."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import nomyo_agent
import nomyo_client as nc
from nomyo_agent import errors as agent_errors
from nomyo_agent import protocol as p
from nomyo_client._from_agent import from_agent_error
from support.scripted_router import ScriptedRouter


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


def _public_classes(package: ModuleType) -> dict[str, type]:
    names = [package.__name__] + [
        info.name
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not info.name.endswith(("_winpipe", "__main__"))
    ]
    found: dict[str, type] = {}
    for name in names:
        for cls_name, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if cls.__module__.startswith(package.__name__) and not cls_name.startswith("_"):
                found[cls_name] = cls
    return found


def test_names_shared_with_the_agent_are_one_condition_translated_one_to_one() -> None:
    # The client's tree keeps the seed's base (APIError), so these four cannot be the agent's
    # classes; each is the client's view of the agent error of the same name, and the
    # translation at the boundary turns the one into the other. A new shared name must be too.
    agent, client = _public_classes(nomyo_agent), _public_classes(nc)
    shared = sorted(set(agent) & set(client))
    assert shared == ["AgentError", "AgentUnavailableError", "IdentityExistsError",
                      "NoIdentityError"]  # fmt: skip
    for name in shared:
        translated = from_agent_error(agent[name]("the agent said so"))
        assert type(translated) is client[name], name
        assert "the agent said so" in translated.message
        assert not issubclass(client[name], agent_errors.AgentError)  # never caught as one
