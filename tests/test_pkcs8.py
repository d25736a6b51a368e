"""PKCS#8 PEM: our writer and reader against cryptography's and OpenSSL's, and bad input."""

from __future__ import annotations

import binascii
import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nomyo_agent import _pkcs8
from nomyo_agent._pkcs8 import Pkcs8Error, WrongPassphrase, decode_pem, encrypt_der
from nomyo_agent._secret import SecretBuffer
from support.keys import rsa_key

FAST = 1000  # iterations for tests that are not about the iteration count


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa_key(2048, 0)


@pytest.fixture(scope="module")
def der(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())


def _iterations(pem: bytes) -> int:
    """The PBKDF2 iteration count, found with openssl rather than with our own parser."""
    out = subprocess.run(
        ["openssl", "asn1parse"], input=pem, capture_output=True, check=True, timeout=10
    ).stdout.decode()
    line = next(x for x in out.splitlines() if "INTEGER" in x)
    return int(line.rsplit(":", 1)[1], 16)


def test_our_pem_is_read_by_cryptography_with_600k_iterations(
    key: rsa.RSAPrivateKey, der: bytes
) -> None:
    pem = encrypt_der(der, "pässphrase".encode())
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert _iterations(pem) == _pkcs8.PBKDF2_ITERATIONS >= 600_000
    loaded = ser.load_pem_private_key(pem, "pässphrase".encode())
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.private_numbers() == key.private_numbers()
    with pytest.raises(ValueError):
        ser.load_pem_private_key(pem, b"other")


def test_round_trip_into_a_secret_buffer(der: bytes) -> None:
    pem = encrypt_der(bytearray(der), memoryview(b"pw"), iterations=FAST)
    with decode_pem(memoryview(pem), bytearray(b"pw")) as out:
        assert isinstance(out, SecretBuffer)
        assert out.view == der
        assert out.locked


def test_reads_cryptography_best_available_encryption(key: rsa.RSAPrivateKey, der: bytes) -> None:
    pem = key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw")
    )
    assert _iterations(pem) == 2048
    with decode_pem(pem, b"pw") as out:
        assert out.view == der


@pytest.mark.parametrize(
    "args",
    [
        ["-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA1", "-iter", "1000"],
        ["-v2", "aes-192-cbc", "-v2prf", "hmacWithSHA512", "-iter", "1"],
        ["-v2", "aes-256-cbc", "-iter", "1000"],
    ],
)
def test_reads_what_openssl_writes(der: bytes, key: rsa.RSAPrivateKey, args: list[str]) -> None:
    assert shutil.which("openssl"), "openssl is needed to produce the samples"
    plain = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    pem = subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-passout", "pass:xyz", *args],
        input=plain, capture_output=True, check=True, timeout=20,
    ).stdout  # fmt: skip
    with decode_pem(pem, b"xyz") as out:
        assert out.view == der


def test_openssl_reads_ours(tmp_path: Path, der: bytes, key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(encrypt_der(der, b"pw", iterations=FAST))
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "pass:pw", "-outform", "DER"],
        capture_output=True, check=True, timeout=20,
    ).stdout  # fmt: skip
    # OpenSSL 3 writes RSA keys as PKCS#1 here; compare the key, not the container.
    assert out == key.private_bytes(
        ser.Encoding.DER, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )


def test_unencrypted_pem(key: rsa.RSAPrivateKey, der: bytes) -> None:
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    assert not _pkcs8.is_encrypted(pem)
    with SecretBuffer.from_bytes(pem) as stored, decode_pem(stored.view, None) as out:
        assert out.view == der


def test_wrong_and_missing_passphrase(der: bytes) -> None:
    pem = encrypt_der(der, b"right", iterations=FAST)
    assert _pkcs8.is_encrypted(pem)
    for wrong in (b"wrong", b"", b"right "):
        with pytest.raises(WrongPassphrase):
            decode_pem(pem, wrong)
    with pytest.raises(WrongPassphrase):
        decode_pem(pem, None)


def test_labels_that_are_not_pkcs8(key: rsa.RSAPrivateKey) -> None:
    pkcs1 = key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    assert _pkcs8.pem_label(pkcs1) == "RSA PRIVATE KEY"
    with pytest.raises(Pkcs8Error, match="not PKCS#8"):
        decode_pem(pkcs1, None)
    with pytest.raises(Pkcs8Error, match="no PEM block"):
        decode_pem(b"hello", None)
    with pytest.raises(Pkcs8Error, match="base64"):
        decode_pem(b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", None)


def test_unsupported_algorithms_are_refused(key: rsa.RSAPrivateKey) -> None:
    plain = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    pem = subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-passout", "pass:x", "-v2", "des-ede3-cbc"],
        input=plain, capture_output=True, check=True, timeout=20,
    ).stdout  # fmt: skip
    with pytest.raises(Pkcs8Error, match="AES-CBC"):
        decode_pem(pem, b"x")


def _pem(der: bytes) -> bytes:
    body = binascii.b2a_base64(der)
    return (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + body + b"-----END ENCRYPTED PRIVATE KEY-----\n"
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_der_raises_only_pkcs8_errors(data: st.DataObject) -> None:
    """Flip, cut and extend our own DER: never a crash, only Pkcs8Error (or its subclass)."""
    base = bytearray(binascii.a2b_base64(b"".join(_SAMPLE.splitlines()[1:-1])))
    op = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if op == "flip":
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] ^= data.draw(st.integers(1, 255))
    elif op == "cut":
        del base[data.draw(st.integers(0, len(base) - 1)) :]
    else:
        base += data.draw(st.binary(min_size=1, max_size=8))
    with contextlib.suppress(Pkcs8Error):
        decode_pem(_pem(bytes(base)), b"pw").close()


_FUZZ_KEY = rsa.generate_private_key(65537, 1024)  # noqa: S505 - a fuzz sample; size is irrelevant
_SAMPLE = encrypt_der(
    _FUZZ_KEY.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
    b"pw",
    iterations=1,
)
