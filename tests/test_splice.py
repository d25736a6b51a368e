"""Large payloads kept out of copies on the event loop (``_splice``): a large request decoded as
a view into its frame, a large reply framed around its payload, byte for byte what the one-shot
codec gives."""

from __future__ import annotations

import os

import msgspec
import pytest

from nomyo_agent import _splice
from nomyo_agent import protocol as p
from nomyo_agent._splice import SPLICE_BYTES, decode_request, frame_parts


@pytest.mark.parametrize("size", [0, 100, SPLICE_BYTES, SPLICE_BYTES + 1, 3 * SPLICE_BYTES + 7])
def test_a_reply_in_parts_is_byte_for_byte_its_frame(size: int) -> None:
    payload = os.urandom(size)
    for reply in (
        p.OpenReply(plaintext=payload, processed_at=1.5),
        p.OpenReply(plaintext=payload),
        p.SealReply(package=payload, public_key_pem="pem", fingerprint="ab", pinned="new"),
    ):
        parts = frame_parts(reply)
        assert b"".join(parts) == p.encode_frame(reply)
        assert len(parts) == (1 if size <= SPLICE_BYTES else 3)  # the payload is not copied
    assert frame_parts(p.Ok()) == [p.encode_frame(p.Ok())]


@pytest.mark.parametrize("size", [10, SPLICE_BYTES + 1])
def test_a_large_request_is_decoded_as_a_view_into_its_frame(size: int) -> None:
    seal = p.Seal(origin="https://r", router_key_pem="pem", plaintext=os.urandom(size), app="a")
    opening = p.Open(package=os.urandom(size))
    for request in (seal, opening):
        body = p.encode_frame(request)[p.HEADER.size :]
        decoded, viewed = decode_request(body)
        assert viewed == (size > SPLICE_BYTES)
        assert type(decoded) is type(request)
        assert msgspec.structs.asdict(decoded) == msgspec.structs.asdict(request)
    with pytest.raises(msgspec.ValidationError):
        decode_request(p.encode_frame(p.Open(package=bytes(SPLICE_BYTES + 1), app=7))[4:])  # type: ignore[arg-type]


def test_the_view_structs_keep_the_fields_of_seal_and_open() -> None:
    for view, real in ((_splice._SealView, p.Seal), (_splice._OpenView, p.Open)):
        fields = {f.name: (f.type, f.default) for f in msgspec.structs.fields(real)}
        mirrored = {f.name: (f.type, f.default) for f in msgspec.structs.fields(view)}
        assert {k: v[1] for k, v in fields.items()} == {k: v[1] for k, v in mirrored.items()}
        assert {k for k, v in fields.items() if v[0] is not mirrored[k][0]} <= {
            "plaintext",
            "package",
        }
        assert view.__struct_config__.tag == real.__struct_config__.tag
