"""The thin client's request path against the real agent (its core behind a real socket,
``support.client_fakes``) and a scripted MockTransport router: request building, headers,
response mapping, key caching, connection reuse, pins, identities, refusals."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

import nomyo_client as nc
from nomyo_agent import _keys
from nomyo_agent import errors as agent_errors
from nomyo_agent import protocol as p
from nomyo_client import SecureChatCompletion, SyncSecureChatCompletion
from support.client_fakes import CuttingRelay, LiveAgent, OtherVersionAgent, key_file_pem
from support.keys import rsa_key
from support.scripted_router import ROUTER_PEM, ROUTER_PEM_2, ScriptedRouter

BASE = "https://router.test"
MESSAGES = [{"role": "user", "content": "hello there"}]


def make(
    agent: LiveAgent | OtherVersionAgent | CuttingRelay, router: ScriptedRouter, **kw: Any
) -> SecureChatCompletion:
    kw.setdefault("base_url", BASE)
    return SecureChatCompletion(
        http_client=router.client(), agent_socket=agent.path, autostart=False, **kw
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_plain_chat_has_the_seed_shape_and_metadata(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()

    async def go() -> dict[str, Any]:
        async with make(live_agent, router) as client:
            return await client.create(model="m", messages=MESSAGES, temperature=0.2)

    response = run(go())
    assert response["choices"][0]["message"]["content"] == "hello there"
    assert response["object"] == "chat.completion"
    meta = response["_metadata"]
    sent_id = router.posts[0].headers["x-payload-id"]
    assert meta["payload_id"] == sent_id
    assert meta["processed_at"] == 1700000001
    assert meta["is_encrypted"] is True
    assert meta["encryption_algorithm"] == "hybrid-aes256-rsa4096"
    assert meta["response_status"] == "success"  # the router's own metadata is kept


def test_headers_follow_the_protocol(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()

    async def go() -> None:
        async with make(live_agent, router, api_key="sk-one") as client:
            await client.create(model="m", messages=MESSAGES)
            await client.create(model="m", messages=MESSAGES, security_tier="high",
                                api_key="sk-two")  # fmt: skip

    run(go())
    first, second = router.posts
    assert first.headers["content-type"] == "application/octet-stream"
    assert first.headers["x-public-key"] == urllib.parse.quote(our_pem(live_agent))
    assert uuid.UUID(first.headers["x-payload-id"]).version == 4
    assert first.headers["x-payload-id"] != second.headers["x-payload-id"]
    assert first.headers["authorization"] == "Bearer sk-one"
    assert "x-security-tier" not in first.headers
    assert second.headers["authorization"] == "Bearer sk-two"
    assert second.headers["x-security-tier"] == "high"


def test_no_authorization_header_without_api_key(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()
    run(make(live_agent, router).create(model="m", messages=MESSAGES))
    assert "authorization" not in router.posts[0].headers


def test_client_only_keys_never_reach_the_plaintext(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    run(make(live_agent, router).create(
        model="m", messages=MESSAGES, security_tier="maximum", api_key="k", base_url=BASE,
        temperature=0.5, max_tokens=7, top_p=0.9, frequency_penalty=0.1, presence_penalty=0.2,
        stop=["x"], n=1, tools=tools, tool_choice="auto", user="u", seed=3, stream=False,
    ))  # fmt: skip
    sent = router.plaintexts[0]
    assert not {"security_tier", "api_key", "base_url"} & set(sent)
    assert sent == {
        "model": "m", "messages": MESSAGES, "temperature": 0.5, "max_tokens": 7, "top_p": 0.9,
        "frequency_penalty": 0.1, "presence_penalty": 0.2, "stop": ["x"], "n": 1,
        "tools": tools, "tool_choice": "auto", "user": "u", "seed": 3, "stream": False,
    }  # fmt: skip


def test_router_key_fetched_once_and_one_agent_connection(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()

    async def go() -> None:
        async with make(live_agent, router) as client:
            await asyncio.gather(*(client.create(model="m", messages=MESSAGES) for _ in range(16)))
            for _ in range(3):
                await client.create(model="m", messages=MESSAGES)

    run(go())
    assert router.gets == 1
    assert len(router.posts) == 19
    # One connection, and on it one request besides the seals and opens: the Hello.
    counters = live_agent.counters
    assert (counters.connections, counters.seals, counters.opens) == (1, 19, 19)
    assert counters.requests == 19 + 19 + 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stream": True}, nc.InvalidRequestError, "stream=True is not supported"),
        ({"security_tier": "ultra"}, nc.InvalidRequestError, "invalid security_tier"),
        ({"security_tier": "ultra"}, ValueError, "invalid security_tier"),  # as the public one
        ({"messages_extra": object()}, nc.InvalidRequestError, "which JSON cannot carry"),
    ],
)
def test_refused_before_anything_is_sent(
    live_agent: LiveAgent, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    router = ScriptedRouter()
    with pytest.raises(error, match=match):
        run(make(live_agent, router).create(model="m", messages=MESSAGES, **kwargs))
    assert router.posts == []
    assert router.gets == 0
    assert live_agent.counters.connections == 0


def test_oversized_payload_refused(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()
    big = [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]
    with pytest.raises(nc.InvalidRequestError, match="over the 10485760-byte limit"):
        run(make(live_agent, router).create(model="m", messages=big))
    assert router.posts == []


def test_plain_http_refused_unless_allowed(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()
    with pytest.raises(nc.SecurityError, match="refusing plain http") as info:
        run(make(live_agent, router, base_url="http://router.test").create(
            model="m", messages=MESSAGES))  # fmt: skip
    assert "allow_http=True" in (info.value.hint or "")
    assert router.gets == 0
    ok = make(live_agent, router, base_url="http://router.test", allow_http=True)
    assert run(ok.create(model="m", messages=MESSAGES))["choices"]


def test_per_call_base_url_uses_its_own_origin(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()

    async def go() -> None:
        async with make(live_agent, router) as client:
            await client.create(model="m", messages=MESSAGES)
            await client.create(model="m", messages=MESSAGES, base_url="https://other.test/")

    run(go())
    assert [r.url.host for r in router.posts] == ["router.test", "other.test"]
    assert router.gets == 2
    assert set(live_agent.pinned()) == {"https://router.test", "https://other.test"}


def test_pin_mismatch_sends_nothing(live_agent: LiveAgent) -> None:
    # Pinned earlier to another key.
    live_agent.call(p.PinAccept(origin=BASE, router_key_pem=ROUTER_PEM_2), p.Accepted)
    router = ScriptedRouter()
    with pytest.raises(nc.RouterKeyChangedError) as info:
        run(make(live_agent, router).create(model="m", messages=MESSAGES))
    err = info.value
    assert isinstance(err, nc.SecurityError)
    assert err.origin == "https://router.test"
    assert err.fingerprint == fingerprint_of(ROUTER_PEM)  # the key it refused
    assert "nomyo-agent pins accept https://router.test" in (err.hint or "")
    assert router.posts == []  # no plaintext request, sealed or not, went out


def test_rotated_router_key_refetched_and_refused_by_the_pin(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()

    async def go() -> None:
        async with make(live_agent, router) as client:
            await client.create(model="m", messages=MESSAGES)
            router.key = ROUTER_PEM_2  # the router rotates; our cached key is stale
            await client.create(model="m", messages=MESSAGES)

    with pytest.raises(nc.RouterKeyChangedError):
        run(go())
    assert router.gets == 2  # fetched again after the 400
    assert len(router.posts) == 2  # the refused key got nothing


def test_rotated_router_key_accepted_when_the_agent_allows(live_agent: LiveAgent) -> None:
    live_agent.pin_policy("off")
    router = ScriptedRouter()

    async def go() -> dict[str, Any]:
        async with make(live_agent, router) as client:
            await client.create(model="m", messages=MESSAGES)
            router.key = ROUTER_PEM_2
            return await client.create(model="m", messages=MESSAGES)

    assert run(go())["choices"][0]["message"]["content"] == "hello there"
    assert router.gets == 2
    assert len(router.posts) == 3


def test_fresh_key_400_is_not_refetched(live_agent: LiveAgent) -> None:
    router = ScriptedRouter(script=[400])
    with pytest.raises(nc.InvalidRequestError, match=r"HTTP 400\): scripted 400"):
        run(make(live_agent, router).create(model="m", messages=MESSAGES))
    assert router.gets == 1
    assert len(router.posts) == 1


def _locked_by_the_user(agent: LiveAgent) -> ScriptedRouter:
    agent.lock()
    return ScriptedRouter()


def _keyring_locked(agent: LiveAgent) -> ScriptedRouter:
    agent.keyring_locked()
    return ScriptedRouter()


def _router_key_not_rsa(agent: LiveAgent) -> ScriptedRouter:
    return ScriptedRouter(key="-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")


@pytest.mark.parametrize(
    ("agent", "setup", "error", "hint"),
    [
        ("live_agent", _locked_by_the_user, nc.AgentLockedError, "nomyo-agent unlock"),
        ("empty_agent", lambda _: ScriptedRouter(), nc.NoIdentityError, "nomyo-agent keygen"),
        ("live_agent", _keyring_locked, nc.AgentError, "unlock your login keyring"),
        ("live_agent", _router_key_not_rsa, nc.SecurityError, "check the base URL"),
    ],
    ids=["locked", "no-identity", "keyring-locked", "bad-router-key"],
)
def test_agent_errors_map_with_hints(
    request: pytest.FixtureRequest,
    agent: str,
    setup: Callable[[LiveAgent], ScriptedRouter],
    error: type[nc.APIError],
    hint: str,
) -> None:
    live: LiveAgent = request.getfixturevalue(agent)
    router = setup(live)
    with pytest.raises(error) as info:
        run(make(live, router).create(model="m", messages=MESSAGES))
    assert type(info.value) is error
    assert isinstance(info.value.__cause__, agent_errors.AgentError)  # translated at the boundary
    assert hint in (info.value.hint or "")
    assert router.posts == []
    assert live.counters.seals == 0


def test_key_dir_of_the_public_client_is_imported_once(
    empty_agent: LiveAgent, tmp_path: Path
) -> None:
    (tmp_path / "private_key.pem").write_bytes(key_file_pem(3))
    router = ScriptedRouter()
    client = make(empty_agent, router, key_dir=tmp_path)

    async def go() -> None:
        async with client:
            assert (await client.create(model="m", messages=MESSAGES))["choices"]
            (tmp_path / "private_key.pem").unlink()  # imported once: never read again
            assert (await client.create(model="m", messages=MESSAGES))["choices"]

    run(go())
    assert empty_agent.fingerprint() == _keys.fingerprint(rsa_key(2048, 3).public_key())


def test_no_identity_without_key_dir(empty_agent: LiveAgent) -> None:
    with pytest.raises(nc.NoIdentityError):
        run(make(empty_agent, ScriptedRouter()).create(model="m", messages=MESSAGES))
    assert empty_agent.fingerprint() is None


def test_protocol_mismatch_is_a_clear_error(other_version_agent: OtherVersionAgent) -> None:
    client = make(other_version_agent, ScriptedRouter())
    with pytest.raises(
        nc.AgentProtocolError, match=f"speaks protocol {p.PROTOCOL_VERSION + 1}"
    ) as info:
        run(client.create(model="m", messages=MESSAGES))
    assert other_version_agent.ops == ["Hello"]
    assert "nomyo-agent stop" in (info.value.hint or "")


def test_no_agent_and_no_autostart(tmp_path: Path) -> None:
    client = SecureChatCompletion(
        BASE, http_client=ScriptedRouter().client(), agent_socket=str(tmp_path / "none.sock"),
        autostart=False,
    )  # fmt: skip
    with pytest.raises(nc.AgentUnavailableError, match="no agent is listening") as info:
        run(client.create(model="m", messages=MESSAGES))
    assert "nomyo-agent start" in (info.value.hint or "")


def test_autostart_env_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMYO_AGENT_AUTOSTART", "0")
    client = SecureChatCompletion(
        BASE, http_client=ScriptedRouter().client(), agent_socket=str(tmp_path / "none.sock")
    )
    with pytest.raises(nc.AgentUnavailableError):
        run(client.create(model="m", messages=MESSAGES))
    assert not (tmp_path / "none.sock").exists()


def test_broken_agent_connection_is_reopened_once(
    live_agent: LiveAgent, cutting_relay: CuttingRelay
) -> None:
    router = ScriptedRouter()

    async def go() -> None:
        async with make(cutting_relay, router) as client:
            await client.create(model="m", messages=MESSAGES)
            cutting_relay.cut_next = 1  # the next reply (a seal's) breaks off halfway
            await client.create(model="m", messages=MESSAGES)

    run(go())
    assert cutting_relay.connections == 2
    assert live_agent.counters.seals == 3  # the cut seal was asked for again, once
    assert len(router.posts) == 2


def test_asyncio_run_twice_with_one_client(live_agent: LiveAgent) -> None:
    # Scripts often call asyncio.run per request; sockets cannot cross loops, so the client
    # must reconnect on the second loop rather than fail with "Event loop is closed".
    router = ScriptedRouter()
    client = make(live_agent, router)
    assert run(client.create(model="m", messages=MESSAGES))["choices"]
    assert run(client.create(model="m", messages=MESSAGES))["choices"]
    assert live_agent.counters.connections == 2
    assert router.gets == 1  # the router key cache is not per loop


def test_sync_client_shares_the_logic(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()
    with SyncSecureChatCompletion(
        BASE, http_client=router.client(), agent_socket=live_agent.path, autostart=False
    ) as client:
        first = client.create(model="m", messages=MESSAGES, security_tier="high")
        second = client.create(model="m", messages=MESSAGES)
        with pytest.raises(nc.InvalidRequestError):
            client.create(model="m", messages=MESSAGES, stream=True)
    assert first["_metadata"]["security_tier"] == "high"
    assert second["choices"][0]["message"]["content"] == "hello there"
    assert live_agent.counters.connections == 1
    assert router.gets == 1


def test_sync_client_works_inside_a_running_loop(live_agent: LiveAgent) -> None:
    router = ScriptedRouter()

    async def go() -> dict[str, Any]:
        with SyncSecureChatCompletion(
            BASE, http_client=router.client(), agent_socket=live_agent.path, autostart=False
        ) as client:
            return client.create(model="m", messages=MESSAGES)

    assert run(go())["choices"]


def test_secure_completion_client_seed_methods(live_agent: LiveAgent, tmp_path: Path) -> None:
    router = ScriptedRouter()
    client = nc.SecureCompletionClient(
        router_url=BASE, http_client=router.client(), agent_socket=live_agent.path,
        autostart=False,
    )  # fmt: skip
    before = live_agent.fingerprint()
    client.generate_keys(save_to_file=True, key_dir=str(tmp_path / "keys"))
    assert client.public_key_pem == our_pem(live_agent)
    assert (tmp_path / "keys" / "public_key.pem").read_text() == our_pem(live_agent)
    assert not (tmp_path / "keys" / "private_key.pem").exists()
    assert live_agent.fingerprint() == before  # an existing identity is kept

    async def go() -> None:
        assert await client.fetch_server_public_key() == ROUTER_PEM
        package = await client.encrypt_payload({"model": "m", "messages": MESSAGES})
        assert json.loads(package)["algorithm"] == "hybrid-aes256-rsa4096"
        answer = await client.send_secure_request(
            {"model": "m", "messages": MESSAGES, "security_tier": "x"}, "pid-1",
            api_key="k", security_tier="maximum",
        )  # fmt: skip
        assert answer["_metadata"]["payload_id"] == "pid-1"
        assert answer["_metadata"]["security_tier"] == "maximum"
        assert "security_tier" not in router.plaintexts[-1]
        with pytest.raises(ValueError, match="invalid security_tier"):
            await client.send_secure_request({"model": "m"}, "p", security_tier="nope")
        await client.aclose()

    run(go())


def test_generate_keys_makes_an_identity_when_there_is_none(empty_agent: LiveAgent) -> None:
    client = nc.SecureCompletionClient(router_url=BASE, agent_socket=empty_agent.path,
                                       autostart=False)  # fmt: skip
    client.generate_keys(password="pw")
    info = empty_agent.core.state.info
    assert info is not None
    assert (info.bits, info.passphrase_protected) == (4096, True)  # the seed's size
    assert client.public_key_pem == info.public_key_pem
    stored = empty_agent.core.store.load()
    assert stored is not None
    pem = bytes(stored.view)
    with pytest.raises(TypeError):  # stored under the passphrase: not without it
        serialization.load_pem_private_key(pem, None)
    key = serialization.load_pem_private_key(pem, b"pw")
    assert _keys.fingerprint(key.public_key()) == info.fingerprint  # type: ignore[arg-type]


def test_load_keys_imports_the_file(empty_agent: LiveAgent, tmp_path: Path) -> None:
    key = tmp_path / "private_key.pem"
    key.write_bytes(key_file_pem(4, password=b"secret"))
    client = nc.SecureCompletionClient(router_url=BASE, agent_socket=empty_agent.path,
                                       autostart=False)  # fmt: skip
    client.load_keys(str(key), password="secret")
    info = empty_agent.core.state.info
    assert info is not None
    assert info.fingerprint == _keys.fingerprint(rsa_key(2048, 4).public_key())
    assert info.passphrase_protected  # the file's password stays the key's passphrase
    # The same identity again (its public key beside the file): the file is not even read.
    (tmp_path / "public_key.pem").write_text(info.public_key_pem)
    key.unlink()
    client.load_keys(str(key))
    assert client.public_key_pem == info.public_key_pem


def test_load_keys_of_another_key_is_refused_with_python_choices(
    live_agent: LiveAgent, tmp_path: Path
) -> None:
    key = tmp_path / "private_key.pem"
    key.write_bytes(key_file_pem(5))
    client = nc.SecureCompletionClient(router_url=BASE, agent_socket=live_agent.path,
                                       autostart=False)  # fmt: skip
    before = live_agent.fingerprint()
    with pytest.raises(nc.IdentityExistsError, match="already holds another identity") as info:
        client.load_keys(str(key))
    assert "agent_socket=" in (info.value.hint or "")
    assert live_agent.fingerprint() == before


def test_blocking_identity_calls_check_the_agent_as_requests_do(
    other_version_agent: OtherVersionAgent,
) -> None:
    # One Hello check for both paths: generate_keys meets the same refusal as create.
    client = nc.SecureCompletionClient(router_url=BASE, agent_socket=other_version_agent.path,
                                       autostart=False)  # fmt: skip
    with pytest.raises(nc.AgentProtocolError, match="speaks protocol") as info:
        client.generate_keys()
    assert "nomyo-agent stop" in (info.value.hint or "")
    assert other_version_agent.ops == ["Hello"]


def our_pem(agent: LiveAgent) -> str:
    """The agent's public key, as it goes out in ``X-Public-Key``."""
    info = agent.core.state.info
    assert info is not None
    return info.public_key_pem


def fingerprint_of(pem: str) -> str:
    return _keys.fingerprint(_keys.load_router_key(pem))
