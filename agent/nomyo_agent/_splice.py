"""Large seal and open payloads kept out of copies on the event loop: requests decoded as views
into their frame, replies framed around their payload.

Rules of this module:

- No payload over ``SPLICE_BYTES`` is copied on the event loop, where one copy of megabytes
  holds the GIL (and so every thread) for milliseconds, tens of them on a busy machine.
- ``decode_request`` decodes a large seal or open with its payload as a view into its frame:
  the caller keeps the frame, unchanged, until the work is done, and wipes it after (the crypto
  pool does, on its worker).
- ``frame_parts`` frames a large reply around its payload, which the server then writes
  ``WRITE_SLICE`` at a time as the socket drains; joined, the parts are ``p.encode_frame``'s
  bytes exactly (``tests/test_splice.py``).
"""

from __future__ import annotations

import msgspec

from nomyo_agent import protocol as p

__all__ = ["SPLICE_BYTES", "WRITE_SLICE", "decode_request", "frame_parts", "reply_estimate"]

# A reply whose payload is over SPLICE_BYTES is written from the payload itself, WRITE_SLICE at a
# time. (Below, one copy into the transport's buffer costs well under a millisecond, and takes
# less memory than the payload held until sent plus a buffer of up to two slices.)
SPLICE_BYTES = 2 * 1024 * 1024
WRITE_SLICE = 256 * 1024

# The one large member of each reply that can carry a payload, and its msgpack key.
_LARGE = {p.OpenReply: "plaintext", p.SealReply: "package"}
_EMPTY_BIN = b"\xc4\x00"  # msgpack bin 8 of length 0


def reply_estimate(size: int) -> int:
    """Bytes a seal's or open's reply may take for a payload of ``size``: a sealed package is
    its payload in base64 (4/3) inside a little JSON; an opened one is smaller than its package."""
    return size * 3 // 2 + 4096


# Seal and Open as the wire has them, but with the payload as a view into the frame: decoding a
# large one then copies nothing on the event loop. tests/test_splice.py checks that they keep
# the fields of p.Seal and p.Open.
class _SealView(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="seal"
):
    origin: str
    router_key_pem: str
    plaintext: memoryview
    app: str = ""


class _OpenView(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="open"
):
    package: memoryview
    app: str = ""


_view_decoder = msgspec.msgpack.Decoder(_SealView | _OpenView)


def decode_request(body: bytearray) -> tuple[p.Request, bool]:
    """``p.decode_request(body)``, and whether the request's payload is a view into ``body``
    (a seal or open over ``SPLICE_BYTES``): ``body`` must then be kept, unchanged, until the
    request is done, and wiped only after."""
    if len(body) <= SPLICE_BYTES or p.op_of(body[:64]) not in ("seal", "open"):
        return p.decode_request(body), False
    view = p._decode(_view_decoder, body)  # the wire's one translation of decode errors
    fields = msgspec.structs.asdict(view)
    # msgspec does not check types on construction: the view stands in for the bytes.
    request = p.Seal(**fields) if isinstance(view, _SealView) else p.Open(**fields)
    return request, True


def frame_parts(reply: p.Response) -> list[bytes | bytearray | memoryview]:
    """The frame of ``reply`` as pieces that join into ``p.encode_frame(reply)``: a large
    payload is not copied into the frame but handed on as a view, so that the event loop
    never spends milliseconds (or, when the machine is busy, tens of them) copying it while
    holding the GIL. Raises ``p.FrameTooLarge`` as ``encode_frame`` does."""
    name = _LARGE.get(type(reply))
    large: bytes | None = getattr(reply, name) if name else None
    if name is None or large is None or len(large) <= SPLICE_BYTES:
        return [p.encode_frame(reply)]
    # The reply with an empty payload, whose bin 8 header is swapped for the bin 32 header
    # msgpack gives a payload of this size (over 64 KiB); the payload itself goes in between.
    small = p.encode(msgspec.structs.replace(reply, **{name: b""}))
    key = msgspec.msgpack.encode(name) + _EMPTY_BIN
    at = small.index(key) + len(key) - len(_EMPTY_BIN)
    head = small[:at] + b"\xc6" + len(large).to_bytes(4, "big")
    tail = small[at + len(_EMPTY_BIN) :]
    length = len(head) + len(large) + len(tail)
    if length > p.MAX_FRAME_BYTES:
        raise p.FrameTooLarge(length)
    return [p.HEADER.pack(length) + head, memoryview(large), tail]
