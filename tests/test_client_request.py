"""The thin client's request path against a fake agent (real socket) and a MockTransport router:
request building, headers, response mapping, key caching, connection reuse, refusals."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest

import nomyo_client as nc
from nomyo_agent import errors as ae
from nomyo_client import SecureChatCompletion, SyncSecureChatCompletion
from support.client_fakes import (
    OUR_PEM,
    ROUTER_PEM,
    ROUTER_PEM_2,
    FakeAgent,
    FakeRouter,
)

BASE = "https://router.test"
MESSAGES = [{"role": "user", "content": "hello there"}]


def make(agent: FakeAgent, router: FakeRouter, **kw: Any) -> SecureChatCompletion:
    kw.setdefault("base_url", BASE)
    return SecureChatCompletion(
        http_client=router.client(), agent_socket=agent.path, autostart=False, **kw
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_plain_chat_has_the_seed_shape_and_metadata(fake_agent: FakeAgent) -> None:
    router = FakeRouter()

    async def go() -> dict[str, Any]:
        async with make(fake_agent, router) as client:
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


def test_headers_follow_the_protocol(fake_agent: FakeAgent) -> None:
    router = FakeRouter()

    async def go() -> None:
        async with make(fake_agent, router, api_key="sk-one") as client:
            await client.create(model="m", messages=MESSAGES)
            await client.create(model="m", messages=MESSAGES, security_tier="high",
                                api_key="sk-two")  # fmt: skip

    run(go())
    first, second = router.posts
    assert first.headers["content-type"] == "application/octet-stream"
    assert first.headers["x-public-key"] == urllib.parse.quote(OUR_PEM)
    assert uuid.UUID(first.headers["x-payload-id"]).version == 4
    assert first.headers["x-payload-id"] != second.headers["x-payload-id"]
    assert first.headers["authorization"] == "Bearer sk-one"
    assert "x-security-tier" not in first.headers
    assert second.headers["authorization"] == "Bearer sk-two"
    assert second.headers["x-security-tier"] == "high"


def test_no_authorization_header_without_api_key(fake_agent: FakeAgent) -> None:
    router = FakeRouter()
    run(make(fake_agent, router).create(model="m", messages=MESSAGES))
    assert "authorization" not in router.posts[0].headers


def test_client_only_keys_never_reach_the_plaintext(fake_agent: FakeAgent) -> None:
    router = FakeRouter()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    run(make(fake_agent, router).create(
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


def test_router_key_fetched_once_and_one_agent_connection(fake_agent: FakeAgent) -> None:
    router = FakeRouter()

    async def go() -> None:
        async with make(fake_agent, router) as client:
            await asyncio.gather(*(client.create(model="m", messages=MESSAGES) for _ in range(16)))
            for _ in range(3):
                await client.create(model="m", messages=MESSAGES)

    run(go())
    assert router.gets == 1
    assert len(router.posts) == 19
    assert fake_agent.connections == 1
    assert fake_agent.ops().count("Hello") == 1


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
    fake_agent: FakeAgent, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    router = FakeRouter()
    with pytest.raises(error, match=match):
        run(make(fake_agent, router).create(model="m", messages=MESSAGES, **kwargs))
    assert router.posts == []
    assert router.gets == 0
    assert fake_agent.requests == []


def test_oversized_payload_refused(fake_agent: FakeAgent) -> None:
    router = FakeRouter()
    big = [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]
    with pytest.raises(nc.InvalidRequestError, match="over the 10485760-byte limit"):
        run(make(fake_agent, router).create(model="m", messages=big))
    assert router.posts == []


def test_plain_http_refused_unless_allowed(fake_agent: FakeAgent) -> None:
    router = FakeRouter()
    with pytest.raises(nc.SecurityError, match="refusing plain http") as info:
        run(make(fake_agent, router, base_url="http://router.test").create(
            model="m", messages=MESSAGES))  # fmt: skip
    assert "allow_http=True" in (info.value.hint or "")
    assert router.gets == 0
    ok = make(fake_agent, router, base_url="http://router.test", allow_http=True)
    assert run(ok.create(model="m", messages=MESSAGES))["choices"]


def test_per_call_base_url_uses_its_own_origin(fake_agent: FakeAgent) -> None:
    router = FakeRouter()

    async def go() -> None:
        async with make(fake_agent, router) as client:
            await client.create(model="m", messages=MESSAGES)
            await client.create(model="m", messages=MESSAGES, base_url="https://other.test/")

    run(go())
    assert [r.url.host for r in router.posts] == ["router.test", "other.test"]
    assert router.gets == 2
    assert set(fake_agent.pins) == {"https://router.test", "https://other.test"}


def test_pin_mismatch_sends_nothing(fake_agent: FakeAgent) -> None:
    fake_agent.pins["https://router.test"] = ROUTER_PEM_2  # pinned earlier to another key
    router = FakeRouter()
    with pytest.raises(nc.RouterKeyChangedError) as info:
        run(make(fake_agent, router).create(model="m", messages=MESSAGES))
    err = info.value
    assert isinstance(err, nc.SecurityError)
    assert err.origin == "https://router.test"
    assert err.fingerprint == "ab" * 32
    assert "nomyo-agent pins accept https://router.test" in (err.hint or "")
    assert router.posts == []  # no plaintext request, sealed or not, went out


def test_rotated_router_key_refetched_and_refused_by_the_pin(fake_agent: FakeAgent) -> None:
    router = FakeRouter()

    async def go() -> None:
        async with make(fake_agent, router) as client:
            await client.create(model="m", messages=MESSAGES)
            router.key = ROUTER_PEM_2  # the router rotates; our cached key is stale
            await client.create(model="m", messages=MESSAGES)

    with pytest.raises(nc.RouterKeyChangedError):
        run(go())
    assert router.gets == 2  # fetched again after the 400
    assert len(router.posts) == 2  # the refused key got nothing


def test_rotated_router_key_accepted_when_the_agent_allows(fake_agent: FakeAgent) -> None:
    fake_agent.pin_policy = "off"
    router = FakeRouter()

    async def go() -> dict[str, Any]:
        async with make(fake_agent, router) as client:
            await client.create(model="m", messages=MESSAGES)
            router.key = ROUTER_PEM_2
            return await client.create(model="m", messages=MESSAGES)

    assert run(go())["choices"][0]["message"]["content"] == "hello there"
    assert router.gets == 2
    assert len(router.posts) == 3


def test_fresh_key_400_is_not_refetched(fake_agent: FakeAgent) -> None:
    router = FakeRouter(script=[400])
    with pytest.raises(nc.InvalidRequestError, match=r"HTTP 400\): scripted 400"):
        run(make(fake_agent, router).create(model="m", messages=MESSAGES))
    assert router.gets == 1
    assert len(router.posts) == 1


@pytest.mark.parametrize(
    ("failure", "error", "hint"),
    [
        (ae.LockedError("the identity is locked"), nc.AgentLockedError, "nomyo-agent unlock"),
        (ae.NoIdentityError("no identity"), nc.NoIdentityError, "nomyo-agent keygen"),
        (ae.KeyringLockedError("keyring locked"), nc.AgentError, "unlock your login keyring"),
        (ae.BadRouterKeyError("not an RSA key"), nc.SecurityError, "check the base URL"),
    ],
)
def test_agent_errors_map_with_hints(
    fake_agent: FakeAgent, failure: ae.AgentError, error: type[nc.APIError], hint: str
) -> None:
    fake_agent.fail_next.append(failure)
    router = FakeRouter()
    with pytest.raises(error) as info:
        run(make(fake_agent, router).create(model="m", messages=MESSAGES))
    assert isinstance(info.value.__cause__, ae.AgentError)
    assert hint in (info.value.hint or "")
    assert router.posts == []


def test_key_dir_of_the_public_client_is_imported_once(
    fake_agent: FakeAgent, tmp_path: Path
) -> None:
    fake_agent.identity = False
    (tmp_path / "private_key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nx\n")
    router = FakeRouter()
    response = run(make(fake_agent, router, key_dir=tmp_path).create(model="m", messages=MESSAGES))
    assert response["choices"]
    assert fake_agent.imported == [b"-----BEGIN PRIVATE KEY-----\nx\n"]


def test_no_identity_without_key_dir(fake_agent: FakeAgent) -> None:
    fake_agent.identity = False
    with pytest.raises(nc.NoIdentityError):
        run(make(fake_agent, FakeRouter()).create(model="m", messages=MESSAGES))


def test_protocol_mismatch_is_a_clear_error(fake_agent: FakeAgent) -> None:
    fake_agent.protocol = 99
    with pytest.raises(nc.AgentProtocolError, match="speaks protocol 99") as info:
        run(make(fake_agent, FakeRouter()).create(model="m", messages=MESSAGES))
    assert "nomyo-agent stop" in (info.value.hint or "")


def test_no_agent_and_no_autostart(tmp_path: Path) -> None:
    client = SecureChatCompletion(
        BASE, http_client=FakeRouter().client(), agent_socket=str(tmp_path / "none.sock"),
        autostart=False,
    )  # fmt: skip
    with pytest.raises(nc.AgentUnavailableError, match="no agent is listening") as info:
        run(client.create(model="m", messages=MESSAGES))
    assert "nomyo-agent start" in (info.value.hint or "")


def test_autostart_env_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMYO_AGENT_AUTOSTART", "0")
    client = SecureChatCompletion(
        BASE, http_client=FakeRouter().client(), agent_socket=str(tmp_path / "none.sock")
    )
    with pytest.raises(nc.AgentUnavailableError):
        run(client.create(model="m", messages=MESSAGES))
    assert not (tmp_path / "none.sock").exists()


def test_broken_agent_connection_is_reopened_once(fake_agent: FakeAgent) -> None:
    router = FakeRouter()

    async def go() -> None:
        async with make(fake_agent, router) as client:
            await client.create(model="m", messages=MESSAGES)
            fake_agent.drop_next = 1
            await client.create(model="m", messages=MESSAGES)

    run(go())
    assert fake_agent.connections == 2
    assert len(router.posts) == 2


def test_asyncio_run_twice_with_one_client(fake_agent: FakeAgent) -> None:
    # Scripts often call asyncio.run per request; sockets cannot cross loops, so the client
    # must reconnect on the second loop rather than fail with "Event loop is closed".
    router = FakeRouter()
    client = make(fake_agent, router)
    assert run(client.create(model="m", messages=MESSAGES))["choices"]
    assert run(client.create(model="m", messages=MESSAGES))["choices"]
    assert fake_agent.connections == 2
    assert router.gets == 1  # the router key cache is not per loop


def test_sync_client_shares_the_logic(fake_agent: FakeAgent) -> None:
    router = FakeRouter()
    with SyncSecureChatCompletion(
        BASE, http_client=router.client(), agent_socket=fake_agent.path, autostart=False
    ) as client:
        first = client.create(model="m", messages=MESSAGES, security_tier="high")
        second = client.create(model="m", messages=MESSAGES)
        with pytest.raises(nc.InvalidRequestError):
            client.create(model="m", messages=MESSAGES, stream=True)
    assert first["_metadata"]["security_tier"] == "high"
    assert second["choices"][0]["message"]["content"] == "hello there"
    assert fake_agent.connections == 1
    assert router.gets == 1


def test_sync_client_works_inside_a_running_loop(fake_agent: FakeAgent) -> None:
    router = FakeRouter()

    async def go() -> dict[str, Any]:
        with SyncSecureChatCompletion(
            BASE, http_client=router.client(), agent_socket=fake_agent.path, autostart=False
        ) as client:
            return client.create(model="m", messages=MESSAGES)

    assert run(go())["choices"]


def test_secure_completion_client_seed_methods(fake_agent: FakeAgent, tmp_path: Path) -> None:
    router = FakeRouter()
    client = nc.SecureCompletionClient(
        router_url=BASE, http_client=router.client(), agent_socket=fake_agent.path,
        autostart=False,
    )  # fmt: skip
    client.generate_keys(save_to_file=True, key_dir=str(tmp_path / "keys"))
    assert client.public_key_pem == OUR_PEM
    assert (tmp_path / "keys" / "public_key.pem").read_text() == OUR_PEM
    assert not (tmp_path / "keys" / "private_key.pem").exists()
    assert "Generate" not in fake_agent.ops()  # an existing identity is kept

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


def test_generate_keys_makes_an_identity_when_there_is_none(fake_agent: FakeAgent) -> None:
    fake_agent.identity = False
    client = nc.SecureCompletionClient(router_url=BASE, agent_socket=fake_agent.path,
                                       autostart=False)  # fmt: skip
    client.generate_keys(password="pw")
    generate = [r for r in fake_agent.requests if type(r).__name__ == "Generate"]
    assert len(generate) == 1
    assert generate[0].passphrase == b"pw"  # type: ignore[union-attr]
    assert generate[0].bits == 4096  # type: ignore[union-attr]


def test_load_keys_imports_the_file(fake_agent: FakeAgent, tmp_path: Path) -> None:
    fake_agent.identity = False
    key = tmp_path / "private_key.pem"
    key.write_bytes(b"PEM")
    client = nc.SecureCompletionClient(router_url=BASE, agent_socket=fake_agent.path,
                                       autostart=False)  # fmt: skip
    client.load_keys(str(key), password="secret")
    assert fake_agent.imported == [b"PEM"]
    imp = next(r for r in fake_agent.requests if type(r).__name__ == "Import")
    assert imp.file_password == b"secret"  # type: ignore[union-attr]
    # The same identity again (its public key beside the file): nothing is imported twice.
    (tmp_path / "public_key.pem").write_text(OUR_PEM)
    client.load_keys(str(key))
    assert fake_agent.imported == [b"PEM"]


def test_blocking_identity_calls_check_the_agent_as_requests_do(fake_agent: FakeAgent) -> None:
    # One Hello check for both paths: generate_keys meets the same refusal as create.
    fake_agent.protocol = 99
    client = nc.SecureCompletionClient(router_url=BASE, agent_socket=fake_agent.path,
                                       autostart=False)  # fmt: skip
    with pytest.raises(nc.AgentProtocolError, match="speaks protocol 99") as info:
        client.generate_keys()
    assert "nomyo-agent stop" in (info.value.hint or "")
    assert fake_agent.ops() == ["Hello"]
