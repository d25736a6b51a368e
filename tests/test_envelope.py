"""The hybrid package (nomyo_agent._envelope): wire shape, round trips, strict refusals, and
cross-checks against the public nomyo client, which nobody here wrote."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from nomyo_agent import _envelope, _secret
from nomyo_agent import package as pk
from nomyo_agent._envelope import Opened, diagnose, open_package, seal
from nomyo_agent.errors import DecryptFailedError
from support.keys import rsa_key
from support.peer import peer_key_dir, peer_private_key, run_peer

OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
PLAINTEXT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa_key(2048, 0)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa_key(2048, 1)


@pytest.fixture(scope="module")
def package(key: rsa.RSAPrivateKey) -> bytes:
    return seal(key.public_key(), PLAINTEXT, processed_at=1700000000.25)


def refused(key: rsa.RSAPrivateKey, data: bytes) -> DecryptFailedError:
    with pytest.raises(DecryptFailedError) as info:
        open_package(key, data)
    return info.value


def edit(package: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(package)
    change(doc)
    return json.dumps(doc).encode()


# --- the wire shape -----------------------------------------------------------------------


def test_package_has_exactly_the_protocol_shape(key: rsa.RSAPrivateKey, package: bytes) -> None:
    doc = json.loads(package)
    assert list(doc) == [
        "version",
        "algorithm",
        "encrypted_payload",
        "encrypted_aes_key",
        "key_algorithm",
        "payload_algorithm",
        "processed_at",
    ]
    assert doc["version"] == "1.0"
    assert doc["algorithm"] == "hybrid-aes256-rsa4096"
    assert doc["key_algorithm"] == "RSA-OAEP-SHA256"
    assert doc["payload_algorithm"] == "AES-256-GCM"
    assert doc["processed_at"] == 1700000000.25
    assert list(doc["encrypted_payload"]) == ["ciphertext", "nonce", "tag"]
    # Standard padded base64 (validate=True refuses any other alphabet), tag apart.
    raw = {k: base64.b64decode(v, validate=True) for k, v in doc["encrypted_payload"].items()}
    assert len(raw["nonce"]) == 12
    assert len(raw["tag"]) == 16
    assert len(raw["ciphertext"]) == len(PLAINTEXT)
    wrapped = base64.b64decode(doc["encrypted_aes_key"], validate=True)
    assert len(wrapped) == 256
    # Independently of the module: OAEP-SHA256 unwraps a 32-byte key, GCM with no AAD opens.
    aes_key = key.decrypt(wrapped, OAEP)
    assert len(aes_key) == 32
    plain = AESGCM(aes_key).decrypt(raw["nonce"], raw["ciphertext"] + raw["tag"], None)
    assert plain == PLAINTEXT


def test_processed_at_is_left_out_unless_given(key: rsa.RSAPrivateKey) -> None:
    doc = json.loads(seal(key.public_key(), b"x"))
    assert "processed_at" not in doc
    assert open_package(key, json.dumps(doc).encode()) == Opened(b"x", None)


def test_every_seal_uses_a_fresh_key_and_nonce(key: rsa.RSAPrivateKey) -> None:
    docs = [json.loads(seal(key.public_key(), PLAINTEXT)) for _ in range(20)]
    nonces = {d["encrypted_payload"]["nonce"] for d in docs}
    keys = {key.decrypt(base64.b64decode(d["encrypted_aes_key"]), OAEP) for d in docs}
    assert len(nonces) == 20
    assert len(keys) == 20


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=3000),
    stamp=st.none() | st.floats(min_value=0, max_value=4e9) | st.integers(0, 2**40),
)
def test_round_trip(key: rsa.RSAPrivateKey, plaintext: bytes, stamp: float | None) -> None:
    opened = open_package(key, seal(key.public_key(), plaintext, processed_at=stamp))
    assert opened.plaintext == plaintext
    assert opened.processed_at == (None if stamp is None else float(stamp))


def test_buffers_are_accepted_both_ways(key: rsa.RSAPrivateKey) -> None:
    sealed = seal(key.public_key(), memoryview(bytearray(b"abc")))
    assert open_package(key, memoryview(sealed)).plaintext == b"abc"
    assert open_package(key, bytearray(sealed)).plaintext == b"abc"


def test_spaced_json_and_integer_timestamps_are_fine(key: rsa.RSAPrivateKey) -> None:
    # The public client writes json.dumps's ", " and ": " separators; routers may send ints.
    doc = json.loads(seal(key.public_key(), b"abc"))
    doc["processed_at"] = 1700000000
    assert open_package(key, json.dumps(doc, indent=2).encode()) == Opened(b"abc", 1700000000.0)
    doc["processed_at"] = None
    assert open_package(key, json.dumps(doc).encode()).processed_at is None
    for optional in ("key_algorithm", "payload_algorithm", "processed_at"):
        del doc[optional]
    assert open_package(key, json.dumps(doc).encode()).plaintext == b"abc"


def test_the_aes_key_and_the_unwrapped_key_are_wiped(
    key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    wiped: list[bytes] = []

    def spy(obj: bytes) -> None:
        wiped.append(obj)
        real(obj)

    real = _secret.wipe
    monkeypatch.setattr(_envelope, "wipe", spy)
    sealed = seal(key.public_key(), b"secret text")
    assert open_package(key, sealed).plaintext == b"secret text"
    assert len(wiped) == 2  # the fresh key in seal, the unwrapped one in open
    assert all(obj == bytes(32) for obj in wiped)  # both zeroed in place
    refused(key, sealed[:-40])
    refused(key, edit(sealed, lambda d: d["encrypted_payload"].update(tag="A" * 22 + "==")))
    assert [len(obj) for obj in wiped[2:]] == [32]  # the tag failure still wiped its key
    # Opened in slices, the buffer they were decrypted into (all 29 bytes) is wiped when the tag
    # fails, and so are the slices that were decrypted apart and copied in (the last ones,
    # whose slice leaves less than a block of room): unauthenticated plaintext never lingers.
    monkeypatch.setattr(pk, "SLICE_BYTES", 12)
    long = b"secret text, more secret text"
    sealed = seal(key.public_key(), long)
    del wiped[:]
    refused(key, edit(sealed, lambda d: d["encrypted_payload"].update(tag="A" * 22 + "==")))
    assert sorted(len(obj) for obj in wiped) == [5, 12, 29, 32]
    assert all(not any(obj) for obj in wiped)


# --- refusals: one opaque error for everything ------------------------------------------------


def flip(b64: str, bit: int = 0) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[bit // 8] ^= 1 << (bit % 8)
    return base64.b64encode(bytes(raw)).decode()


def payload_field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["encrypted_payload"].__setitem__(name, value)


def top_field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(name, value)


def drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        for part in path[:-1]:
            d = d[part]
        del d[path[-1]]

    return change


BAD_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "version 0.9": top_field("version", "0.9"),
    "version 2.0": top_field("version", "2.0"),
    "version as number": top_field("version", 1.0),
    "algorithm downgrade": top_field("algorithm", "hybrid-aes128-rsa2048"),
    "key_algorithm other": top_field("key_algorithm", "RSA-OAEP-SHA1"),
    "payload_algorithm other": top_field("payload_algorithm", "AES-128-CBC"),
    "no version": drop("version"),
    "no algorithm": drop("algorithm"),
    "no encrypted_payload": drop("encrypted_payload"),
    "no encrypted_aes_key": drop("encrypted_aes_key"),
    "no ciphertext": drop("encrypted_payload", "ciphertext"),
    "no nonce": drop("encrypted_payload", "nonce"),
    "no tag": drop("encrypted_payload", "tag"),
    "unknown payload field": payload_field("aad", ""),
    "ciphertext as number": payload_field("ciphertext", 5),
    "payload as list": top_field("encrypted_payload", []),
    "processed_at as string": top_field("processed_at", "1700000000"),
    "processed_at as bool": top_field("processed_at", True),
    "nonce of 11 bytes": payload_field("nonce", base64.b64encode(b"n" * 11).decode()),
    "nonce of 16 bytes": payload_field("nonce", base64.b64encode(b"n" * 16).decode()),
    "tag of 12 bytes": payload_field("tag", base64.b64encode(b"t" * 12).decode()),
    "unpadded base64": payload_field("tag", base64.b64encode(b"t" * 16).decode().rstrip("=")),
    "urlsafe base64": top_field("encrypted_aes_key", "-_" * 172),
    "short wrapped key": top_field("encrypted_aes_key", base64.b64encode(b"k" * 255).decode()),
    "long wrapped key": top_field("encrypted_aes_key", base64.b64encode(b"k" * 512).decode()),
}


@pytest.mark.parametrize("name", list(BAD_EDITS))
def test_malformed_packages_are_refused(key: rsa.RSAPrivateKey, package: bytes, name: str) -> None:
    bad = edit(package, BAD_EDITS[name])
    error = refused(key, bad)
    assert str(error) == "the encrypted package could not be opened"
    assert error.__cause__ is None
    assert error.__suppress_context__
    if "wrapped key" not in name:  # its size depends on the private key, unknown to diagnose
        assert diagnose(bad)  # the development router can still say what is wrong


def test_downgrades_are_named_by_diagnose(package: bytes) -> None:
    assert diagnose(package) is None
    reason = diagnose(edit(package, top_field("version", "0.9")))
    assert reason is not None
    assert "version" in reason
    reason = diagnose(edit(package, top_field("algorithm", "x")))
    assert reason is not None
    assert "algorithm" in reason


@pytest.mark.parametrize(
    "field", ["ciphertext", "nonce", "tag", "encrypted_aes_key"], ids=lambda f: f"flip {f}"
)
@pytest.mark.parametrize("bit", [0, 7, 77])
def test_flipped_bits_are_refused(
    key: rsa.RSAPrivateKey, package: bytes, field: str, bit: int
) -> None:
    def change(d: dict[str, Any]) -> None:
        holder = d if field == "encrypted_aes_key" else d["encrypted_payload"]
        holder[field] = flip(holder[field], bit % (len(base64.b64decode(holder[field])) * 8))

    bad = edit(package, change)
    assert diagnose(bad) is None  # well-formed: only the cryptography can tell
    refused(key, bad)


def test_wrong_key_is_refused(other_key: rsa.RSAPrivateKey, package: bytes) -> None:
    refused(other_key, package)


def test_wrong_key_size_is_refused_before_unwrapping(package: bytes) -> None:
    bigger = rsa_key(3072)
    refused(bigger, package)


def test_a_wrapped_key_that_is_not_32_bytes_is_refused(key: rsa.RSAPrivateKey) -> None:
    short = AESGCM.generate_key(bit_length=128)
    nonce = b"\x01" * 12
    sealed = AESGCM(short).encrypt(nonce, b"abc", None)
    doc = {
        "version": "1.0",
        "algorithm": "hybrid-aes256-rsa4096",
        "encrypted_payload": {
            "ciphertext": base64.b64encode(sealed[:-16]).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "tag": base64.b64encode(sealed[-16:]).decode(),
        },
        "encrypted_aes_key": base64.b64encode(key.public_key().encrypt(short, OAEP)).decode(),
    }
    refused(key, json.dumps(doc).encode())


def test_unknown_top_level_members_are_ignored_as_the_public_client_does(
    key: rsa.RSAPrivateKey, package: bytes
) -> None:
    extended = edit(package, top_field("router_metadata", {"region": "eu:1", "n": [1, 2]}))
    assert open_package(key, extended).plaintext == open_package(key, package).plaintext


def test_duplicate_keys_are_refused(key: rsa.RSAPrivateKey, package: bytes) -> None:
    text = package.decode()
    head = '{"version":"0.9",'
    assert text.startswith('{"version":"1.0",')
    refused(key, (head + text[1:]).encode())  # a stale first copy, msgspec keeps the last
    refused(key, text.replace('"nonce":', '"nonce":"AAAAAAAAAAAAAAAA","nonce":').encode())
    assert diagnose((head + text[1:]).encode()) == "not a package: a key appears twice"


def test_truncations_are_refused(key: rsa.RSAPrivateKey, package: bytes) -> None:
    for end in [*range(0, 40), *range(40, len(package), 37), len(package) - 1]:
        refused(key, package[:end])


@pytest.mark.parametrize(
    "data",
    [b"", b"null", b"[]", b"{}", b"not json", b"\xff\xfe", b'"1.0"', b"<html>500</html>"],
)
def test_non_packages_are_refused(key: rsa.RSAPrivateKey, data: bytes) -> None:
    refused(key, data)


# --- the public client, which nobody here wrote ---------------------------------------------


@pytest.mark.slow
def test_the_public_client_and_we_open_each_others_packages(key: rsa.RSAPrivateKey) -> None:
    router_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    peer = peer_private_key()
    request = {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}], "n": 1}
    answer = {"id": "x", "object": "chat.completion", "choices": [], "_metadata": {"a": 1}}
    ours = seal(peer.public_key(), json.dumps(answer).encode(), processed_at=1700000123.5)
    tampered = edit(ours, payload_field("tag", flip(json.loads(ours)["encrypted_payload"]["tag"])))
    downgraded = edit(ours, top_field("version", "0.9"))
    results = run_peer(
        [
            {"op": "seal", "router_pem": router_pem, "payload": request},
            {"op": "open", "key_dir": peer_key_dir(), "package": ours.decode(), "payload_id": "p1"},
            {
                "op": "open",
                "key_dir": peer_key_dir(),
                "package": tampered.decode(),
                "payload_id": "p",
            },
            {
                "op": "open",
                "key_dir": peer_key_dir(),
                "package": downgraded.decode(),
                "payload_id": "p",
            },
        ]
    )
    # Its request package opens here, and its plaintext is the request's JSON.
    theirs = results[0]["package"].encode()
    assert diagnose(theirs) is None
    assert json.loads(open_package(key, theirs).plaintext) == request
    assert list(json.loads(theirs)) == list(json.loads(ours))[:-1]  # same keys, same order
    # Our answer package opens there, with the metadata PROTOCOL.md says it adds.
    response = results[1]["response"]
    assert response["id"] == "x"
    assert response["_metadata"] == {
        "a": 1,
        "payload_id": "p1",
        "processed_at": 1700000123.5,
        "is_encrypted": True,
        "encryption_algorithm": "hybrid-aes256-rsa4096",
    }
    assert results[2]["error"]["type"] == "SecurityError"
    # It refuses a downgrade too, though with a ValueError rather than a SecurityError.
    assert results[3]["error"]["type"] == "ValueError"
    assert "version" in results[3]["error"]["message"]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_refused_or_harmless(
    key: rsa.RSAPrivateKey, package: bytes, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(package) - 1))
    value = data.draw(st.integers(0, 255))
    changed = package[:position] + bytes([value]) + package[position + 1 :]
    try:
        opened = open_package(key, changed)
    except DecryptFailedError:
        return
    # Only a change JSON ignores (the byte itself, or a digit of processed_at) may pass.
    assert opened.plaintext == PLAINTEXT


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_only_ever_raise_decrypt_failed(key: rsa.RSAPrivateKey, data: bytes) -> None:
    with pytest.raises(DecryptFailedError):
        open_package(key, data)
