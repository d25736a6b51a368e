"""The RPC protocol without I/O: round trips, framing, and malformed input (property tests)."""

from __future__ import annotations

import contextlib
import struct

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nomyo_agent import protocol as p

REQUESTS = [
    p.Hello(client="t", capabilities=["seal"]),
    p.Status(),
    p.PublicKey(),
    p.Seal(origin="https://r.example", router_key_pem="PEM", plaintext=b"\x00\xff" * 10),
    p.Open(package=b'{"version":"1.0"}'),
    p.Lock(),
    p.Unlock(passphrase=b"pw"),
    p.Unlock(pinentry=p.PinEntry(env={"DISPLAY": ":1"}, ttyname="/dev/pts/3")),
    p.Generate(bits=2048, force=True),
    p.Import(pem=b"-----BEGIN", file_password=b"x"),
    p.PinsList(),
    p.PinAccept(origin="https://r"),
    p.PinForget(origin="https://r"),
    p.Watch(),
    p.Stop(),
    p.Hello(client="t", pinentry=p.PinEntry(env={"TERM": "xterm"}, ttyname="/dev/pts/1")),
    p.Apps(),
    p.AppForget(app="/usr/bin/tool"),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_every_request_round_trips_through_a_frame(request_: p.Request) -> None:
    frame = p.encode_frame(request_)
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    bodies = list(p.FrameReader().feed(frame))
    assert [p.decode_request(b) for b in bodies] == [request_]


def test_every_request_type_is_in_the_union() -> None:
    assert {type(r) for r in REQUESTS} == set(p.Request.__args__)  # type: ignore[attr-defined]


def test_requests_are_tagged_by_op() -> None:
    body = msgspec.msgpack.decode(p.encode(p.Lock()))
    assert body == {"op": "lock"}


def test_unknown_fields_and_ops_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        p.decode_request(msgspec.msgpack.encode({"op": "lock", "extra": 1}))
    with pytest.raises(msgspec.ValidationError):
        p.decode_request(msgspec.msgpack.encode({"op": "format_disk"}))
    with pytest.raises(msgspec.ValidationError):
        p.decode_request(msgspec.msgpack.encode({"op": "seal", "origin": 1}))


def test_responses_round_trip() -> None:
    err = p.Error(code=p.ErrorCode.PIN_MISMATCH, message="m", hint="h", origin="o", fingerprint="f")
    assert p.decode_response(p.encode(err)) == err
    apps = p.AppsReply(
        apps=[p.AppInfo(app="/x/a.py (/usr/bin/python3)", decision="allowed", last_seen=1.0)],
        confirm="first-use",
    )
    assert p.decode_response(p.encode(apps)) == apps


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    reader = p.FrameReader()
    with pytest.raises(p.FrameTooLarge):
        list(reader.feed(struct.pack(">I", p.MAX_FRAME_BYTES + 1)))


def test_cap_holds_a_maximal_protocol_payload() -> None:
    # 10 MiB of JSON sealed is ~13.4 MiB of base64 in the package: it must fit in one frame.
    package = b"x" * (10 * 1024 * 1024 * 4 // 3 + 4096)
    assert len(p.encode_frame(p.Open(package=package))) < p.MAX_FRAME_BYTES


@given(st.lists(st.sampled_from(REQUESTS), max_size=8), st.integers(1, 64))
def test_frames_split_anywhere_reassemble(requests: list[p.Request], chunk: int) -> None:
    stream = b"".join(p.encode_frame(r) for r in requests)
    reader = p.FrameReader()
    out = []
    for i in range(0, len(stream), chunk):
        out += [p.decode_request(b) for b in reader.feed(stream[i : i + chunk])]
    assert out == requests
    assert reader.pending == 0


@settings(max_examples=300)
@given(st.binary(max_size=512))
@example(b"\x81\xa2op\xaapubiic_ke\xb8")  # invalid UTF-8 in a str: msgspec raises a builtin
def test_random_bodies_decode_or_fail_with_msgspec_errors_only(body: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        p.decode_request(body)


# --- per-operation caps and the admission hook (the agent's memory budget) -------------------

BIG_SEAL = p.Seal(
    origin="https://r", router_key_pem="PEM", plaintext=b"s" * (p.SMALL_FRAME_BYTES * 2)
)


def test_a_large_frame_is_capped_by_the_operation_it_names_first() -> None:
    big_hello = msgspec.msgpack.encode({"op": "hello", "capabilities": ["ab"] * 40_000})
    assert len(big_hello) > p.SMALL_FRAME_BYTES
    with pytest.raises(p.FrameTooLarge, match="hello frame"):
        list(p.FrameReader(requests=True).feed(struct.pack(">I", len(big_hello)) + big_hello[:64]))
    # the tag not first (or no map at all): a large frame is refused as a small one
    for body in (
        msgspec.msgpack.encode({"plaintext": b"x" * 70_000, "op": "seal"}),
        b"\x00" * 70_000,
    ):
        with pytest.raises(p.FrameTooLarge):
            list(p.FrameReader(requests=True).feed(struct.pack(">I", len(body)) + body[:64]))
    # over the op's own cap, known from the header and the tag alone
    header = struct.pack(">I", p.request_cap("seal") + 1) + p.encode(BIG_SEAL)[:48]
    with pytest.raises(p.FrameTooLarge, match="seal frame"):
        list(p.FrameReader(requests=True).feed(header))
    # over every cap: refused on the header alone
    with pytest.raises(p.FrameTooLarge):
        list(p.FrameReader(requests=True).feed(struct.pack(">I", p.MAX_FRAME_BYTES + 1)))


def test_encode_frame_refuses_a_request_over_its_cap_before_sending() -> None:
    with pytest.raises(p.FrameTooLarge):
        p.encode_frame(p.PinAccept(origin="o", router_key_pem="A" * p.SMALL_FRAME_BYTES))
    assert len(p.encode_frame(BIG_SEAL)) > p.SMALL_FRAME_BYTES  # seal may be large
    answer = b"x" * p.MAX_ANSWER_BYTES  # a maximal answer opens: its Open frame fits
    assert len(p.encode_frame(p.Open(package=answer))) <= p.MAX_FRAME_BYTES + p.HEADER.size


ALL = [*REQUESTS, BIG_SEAL]


# Indices, not the requests themselves: hypothesis would print a 128 KiB repr of BIG_SEAL.
# Cuts: small ones (splitting headers and the tag), then large ones (a byte at a time through a
# 128 KiB frame would take seconds).
@settings(deadline=None)
@given(st.lists(st.integers(0, len(ALL) - 1), max_size=6),
       st.lists(st.integers(1, 64), max_size=8), st.integers(1000, 70_000),
       st.integers(0, 3))  # fmt: skip
def test_held_frames_resume_where_they_stopped(
    picks: list[int], small_cuts: list[int], chunk: int, refusals: int
) -> None:
    requests = [ALL[i] for i in picks]
    stream = b"".join(p.encode_frame(r) for r in requests)
    asked: list[int] = []

    def admit(length: int) -> bool:  # says no `refusals` times per large frame, then yes
        asked.append(length)
        return asked.count(length) > refusals

    reader = p.FrameReader(requests=True, admit=admit)
    cuts = [*small_cuts]
    pos, out = 0, []
    while pos < len(stream):
        size = cuts.pop(0) if cuts else chunk
        out += [p.decode_request(b) for b in reader.feed(stream[pos : pos + size])]
        pos += size
        for _ in range(refusals):  # the agent asks again once memory is granted
            out += [p.decode_request(b) for b in reader.feed(b"")]
    assert out == requests
    assert reader.pending == 0
    assert set(asked) <= {len(p.encode(BIG_SEAL))}


def test_the_budget_grants_in_order_and_never_over_the_limit_but_for_one() -> None:
    from nomyo_agent._budget import ByteBudget

    budget = ByteBudget(100)
    granted: list[str] = []
    assert budget.try_take(60)
    assert not budget.try_take(50)
    budget.wait("a", 50, lambda: granted.append("a"))
    budget.wait("b", 10, lambda: granted.append("b"))
    assert not budget.try_take(1)  # nobody jumps the queue
    budget.release(60)
    assert granted == ["a", "b"]
    assert budget.used == 60
    budget.charge(500)  # an untaken reply: already spent
    assert budget.peak == 560
    budget.release(560)
    assert budget.try_take(1000)  # one frame larger than the budget still goes when alone
    budget.wait("c", 1, lambda: granted.append("c"))
    budget.cancel("c")
    budget.release(1000)
    assert granted == ["a", "b"]


# --- the "app" field of Seal and Open: compatible both ways ---------------------------------


class _OldSeal(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="seal"):
    """Seal exactly as agents before the "app" capability declare it."""

    origin: str
    router_key_pem: str
    plaintext: bytes


class _OldOpen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="open"):
    package: bytes


_OLD_AGENT = msgspec.msgpack.Decoder(_OldSeal | _OldOpen)


def test_a_seal_or_open_naming_no_app_is_byte_for_byte_what_older_agents_decode() -> None:
    seal = p.Seal(origin="https://r", router_key_pem="PEM", plaintext=b"x")
    assert _OLD_AGENT.decode(p.encode(seal)) == _OldSeal("https://r", "PEM", b"x")
    assert p.encode(seal) == msgspec.msgpack.encode(_OldSeal("https://r", "PEM", b"x"))
    assert _OLD_AGENT.decode(p.encode(p.Open(package=b"{}"))) == _OldOpen(b"{}")


def test_an_older_agent_refuses_a_named_app_so_clients_send_it_only_with_the_capability() -> None:
    assert "app" in p.CAPABILITIES
    with pytest.raises(msgspec.ValidationError, match="app"):
        _OLD_AGENT.decode(p.encode(p.Open(package=b"{}", app="editor")))


def test_an_older_clients_seal_and_open_decode_with_no_app() -> None:
    old = msgspec.msgpack.encode(_OldSeal("https://r", "PEM", b"x"))
    assert p.decode_request(old) == p.Seal(origin="https://r", router_key_pem="PEM", plaintext=b"x")
    assert p.decode_request(msgspec.msgpack.encode(_OldOpen(b"{}"))) == p.Open(package=b"{}")
    named = p.decode_request(
        p.encode(p.Seal(origin="o", router_key_pem="k", plaintext=b"", app="a"))
    )
    assert isinstance(named, p.Seal)
    assert named.app == "a"
