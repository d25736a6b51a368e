"""The package sealed, opened and parsed in slices (nomyo_agent.package, nomyo_agent._envelope):
byte for byte what the one-shot forms give, the same verdict on any document, and understood by
the public nomyo client, which nobody here wrote.

The slices exist so that a large payload never holds the GIL for long (see package.py); these
tests shrink the slice to a few bytes so that every path of the cut is taken on small inputs.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from nomyo_agent import _envelope
from nomyo_agent import package as pk
from nomyo_agent._envelope import open_package, seal
from nomyo_agent._keys import public_pem
from nomyo_agent.errors import DecryptFailedError
from support.keys import rsa_key
from support.peer import peer_key_dir, peer_private_key, run_peer

SLICES = st.sampled_from([12, 24, 36, 96])  # whole base64 quanta both ways


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa_key(2048, 0)


def one_shot_package(
    ciphertext_and_tag: bytes, nonce: bytes, wrapped: bytes, processed_at: float | None
) -> bytes:
    """The package as the one-shot code wrote it: every member through msgspec at once."""
    doc: dict[str, Any] = {
        "version": "1.0",
        "algorithm": "hybrid-aes256-rsa4096",
        "encrypted_payload": {
            "ciphertext": ciphertext_and_tag[:-16],
            "nonce": nonce,
            "tag": ciphertext_and_tag[-16:],
        },
        "encrypted_aes_key": wrapped,
        "key_algorithm": "RSA-OAEP-SHA256",
        "payload_algorithm": "AES-256-GCM",
    }
    if processed_at is not None:
        doc["processed_at"] = processed_at
    return msgspec.json.encode(doc)


@settings(max_examples=150, deadline=None)
@given(
    plaintext=st.binary(max_size=400),
    step=SLICES,
    stamp=st.none() | st.floats(0, 2e9),
)
def test_sliced_seal_is_byte_for_byte_the_one_shot_seal(
    key: rsa.RSAPrivateKey,
    plaintext: bytes,
    step: int,
    stamp: float | None,
) -> None:
    drawn = [os.urandom(32), os.urandom(12)]
    secrets = iter([bytes(bytearray(drawn[0])), drawn[1]])  # seal wipes its key: a copy
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pk, "SLICE_BYTES", step)
        patch.setattr(os, "urandom", lambda n: next(secrets))
        sealed = seal(key.public_key(), plaintext, processed_at=stamp)
    wrapped = base64.b64decode(json.loads(sealed)["encrypted_aes_key"])
    sealed_once = AESGCM(drawn[0]).encrypt(drawn[1], plaintext, None)
    assert sealed == one_shot_package(sealed_once, drawn[1], wrapped, stamp)
    assert open_package(key, sealed).plaintext == plaintext


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(max_size=400), step=SLICES)
def test_sliced_open_opens_what_the_one_shot_seal_wrote(
    key: rsa.RSAPrivateKey, plaintext: bytes, step: int
) -> None:
    aes, nonce = os.urandom(32), os.urandom(12)
    wrapped = key.public_key().encrypt(aes, _envelope._OAEP)
    package = one_shot_package(AESGCM(aes).encrypt(nonce, plaintext, None), nonce, wrapped, 1.5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pk, "SLICE_BYTES", step)
        assert open_package(key, package) == _envelope.Opened(plaintext, 1.5)
        # As the agent has it: a view into the request's frame.
        framed = bytearray(b"xx" + package + b"yy")
        assert open_package(key, memoryview(framed)[2:-2]).plaintext == plaintext
        tampered = bytearray(package)
        tampered[package.index(b'"tag":"') + 7] ^= 0x01  # A<->@ etc.: refused either way
        with pytest.raises(DecryptFailedError):
            open_package(key, bytes(tampered))


# Edits that a router (or an attacker) could make to the text of a package; the cut must reach
# the one-shot verdict on each.
_EDITS = [
    lambda t: t,
    lambda t: t.replace(b'"ciphertext":"', b'"ciphertext" : \n "'),
    lambda t: t.replace(b'"ciphertext":"', b'"ciphertext":"\\u0041'),
    lambda t: t.replace(b'"ciphertext":"', b'"x":"\\"ciphertext\\":\\"","ciphertext":"'),
    lambda t: t.replace(b'"ciphertext":"', b'"ciphertext":"AAAA","ciphertext":"'),
    lambda t: t.replace(b'{"version"', b'{"ciphertext":"QUFB","version"'),
    lambda t: t.replace(b'{"version"', b'{"pad":"' + b"QUFB" * 40 + b'","version"'),
    lambda t: t.replace(b'"ciphertext":"', b'"ciphertext":"QQ==', 1),
    lambda t: t.replace(b'"ciphertext":"', b'"ciphertext":"QUF', 1),
    lambda t: t.replace(b'"ciphertext":"', b'"ciphertext":"QU*B', 1),
    lambda t: t.replace(b'==","nonce"', b'","nonce"'),
    lambda t: t.replace(b'","nonce"', b'=","nonce"'),
    lambda t: t.replace(b'"nonce"', b'"nonce":"AAAA","nonce"'),
    lambda t: t.replace(b'"1.0"', b'"0.9"'),
    lambda t: t.replace(b'"ciphertext":"', b'"ciphertext":'),
    lambda t: t[: len(t) // 2],
    lambda t: t.replace(b'"encrypted_payload":{', b'"encrypted_payload":{"extra":1,'),
]


@settings(max_examples=300, deadline=None)
@given(
    plaintext=st.binary(max_size=300),
    edit=st.sampled_from(range(len(_EDITS))),
    step=SLICES,
)
def test_check_in_slices_gives_the_one_shot_verdict(
    key: rsa.RSAPrivateKey, plaintext: bytes, edit: int, step: int
) -> None:
    text = _EDITS[edit](seal(key.public_key(), plaintext, processed_at=2.0))
    sliced = pk.check(text, slice_bytes=step)
    # As the agent hands it over: a view into the frame the request came in.
    viewed = pk.check(memoryview(bytearray(b"head" + text))[4:], slice_bytes=step)
    whole = pk.check(text, slice_bytes=len(text) + 1)  # never cut: one msgspec decode
    if isinstance(whole, pk.Defect):
        assert isinstance(sliced, pk.Defect)
        assert isinstance(viewed, pk.Defect)
    else:
        assert sliced == whole  # a bytearray ciphertext equals the bytes one
        assert viewed == whole


_BASE64ISH = st.text(alphabet="AQgw+/=-_ \n\\", max_size=24).map(str.encode)


@settings(max_examples=500, deadline=None)
@given(text=_BASE64ISH | st.binary(max_size=12))
def test_the_cut_ciphertext_is_decoded_as_strictly_as_msgspec_decodes_a_small_one(
    text: bytes,
) -> None:
    """A large package's ciphertext goes through pybase64, a small one's through msgspec: both
    must accept exactly standard, padded base64 and give the same bytes."""
    try:
        expected: bytes | None = msgspec.json.decode(b'"' + text + b'"', type=bytes)
    except (msgspec.DecodeError, UnicodeDecodeError):
        expected = None
    if b'"' in text or b"\\" in text:
        return  # no JSON string of this text: the cut never hands it over
    assert pk._b64decode(memoryview(text)) == expected


def test_the_cut_is_taken_for_a_package_of_the_usual_shape(key: rsa.RSAPrivateKey) -> None:
    text = seal(key.public_key(), bytes(1000))
    assert pk._ciphertext_span(text, 64) is not None
    escaped = text.replace(b'"ciphertext":"', b'"ciphertext":"\\u0041')
    assert pk._ciphertext_span(escaped, 64) is None  # parsed in one shot instead


@pytest.mark.slow
def test_the_public_client_opens_our_large_packages_and_we_open_its(
    key: rsa.RSAPrivateKey,
) -> None:
    """A payload of several slices each way, against the peer's one-shot AES-GCM."""
    router_pem = public_pem(key.public_key())
    peer_key = peer_private_key().public_key()
    content = os.urandom(pk.SLICE_BYTES).hex()  # two slices and more of JSON
    request = {"model": "m", "messages": [{"role": "user", "content": content}]}
    answer = {"id": "x", "object": "chat.completion", "choices": [], "note": content}
    ours = seal(peer_key, json.dumps(answer).encode(), processed_at=5.0)
    results = run_peer(
        [
            {"op": "seal", "router_pem": router_pem, "payload": request},
            {"op": "open", "key_dir": peer_key_dir(), "package": ours.decode(), "payload_id": "p"},
        ]
    )
    theirs = results[0]["package"].encode()
    assert json.loads(open_package(key, theirs).plaintext) == request
    assert results[1]["response"]["note"] == content
