"""Identity: generate and import through the key worker, unlock in-process, IdentityInfo on disk.

Import samples come from the real public client (``nomyo==0.2.9`` in its own virtualenv), made
by its own ``generate_keys(save_to_file=True, password=...)``, plus the PKCS#1 forms OpenSSL
tools write.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from nomyo_agent import _identity, _keys, _keyworker, _pkcs8
from nomyo_agent import protocol as p
from nomyo_agent._identity import IdentityInfo, generate, import_pem, unlock
from nomyo_agent._secret import SecretBuffer
from nomyo_agent.errors import (
    BadKeyError,
    BadPassphraseError,
    CorruptIdentityError,
    InternalError,
    LockedError,
    PassphraseRequiredError,
)
from support.agent import RunningAgent
from support.peer import peer_python

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

_PEER_PROGRAM = """
import sys
from nomyo.SecureCompletionClient import SecureCompletionClient
client = SecureCompletionClient(router_url="https://router.invalid")
client.key_size = 2048  # the client's own attribute; 4096 by default, slower to make
password = sys.argv[2] or None
client.generate_keys(save_to_file=True, key_dir=sys.argv[1], password=password)
"""


@pytest.fixture(scope="module")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``client_keys/private_key.pem`` as the public client writes it, without and with a
    password (``hunter2 ü``)."""
    root = tmp_path_factory.mktemp("client_keys")
    out = {}
    for name, password in (("plain", ""), ("password", "hunter2 ü")):
        subprocess.run(
            [peer_python(), "-c", _PEER_PROGRAM, str(root / name), password],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        out[name] = root / name / "private_key.pem"
    return out


def _public_pem(path: Path) -> str:
    return (path.parent / "public_key.pem").read_text()


def _check_usable(key: _identity.UnlockedKey, info: IdentityInfo) -> None:
    assert key.fingerprint == info.fingerprint
    assert _keys.public_pem(key.public_key) == info.public_key_pem
    secret = os.urandom(32)
    assert key.private_key.decrypt(key.public_key.encrypt(secret, OAEP), OAEP) == secret


# --- IdentityInfo ------------------------------------------------------------------------------


def _sample_info() -> IdentityInfo:
    key = rsa.generate_private_key(65537, 2048).public_key()
    return IdentityInfo(_keys.public_pem(key), _keys.fingerprint(key), 2048, True, 1.5e9)


def test_info_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.json"
    info = _sample_info()
    info.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert IdentityInfo.load(path) == info
    replaced = IdentityInfo(info.public_key_pem, info.fingerprint, 2048, False, 2e9)
    replaced.save(path)
    assert IdentityInfo.load(path) == replaced
    assert sorted(p.name for p in path.parent.iterdir()) == ["identity.json"]


def test_info_missing_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    assert IdentityInfo.load(path) is None
    for text in ("{not json", "[]", json.dumps({"bits": 1}), json.dumps({
        "public_key_pem": "x", "fingerprint": "ab", "bits": 1,
        "passphrase_protected": False, "created": 0,
    })):  # fmt: skip
        path.write_text(text)
        with pytest.raises(CorruptIdentityError) as info:
            IdentityInfo.load(path)
        assert str(info.value) == str(info.value).lower() or "identity.json" in str(info.value)


# --- generate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", [None, b"", b"correct horse"])
def test_generate_then_unlock(passphrase: bytes | None) -> None:
    stored, info = generate(2048, passphrase)
    with stored:
        assert info.bits == 2048
        assert info.passphrase_protected is bool(passphrase)
        assert _identity.is_passphrase_protected(stored) is bool(passphrase)
        label = "ENCRYPTED PRIVATE KEY" if passphrase else "PRIVATE KEY"
        assert _pkcs8.pem_label(stored.view) == label
        key = unlock(stored, passphrase or None)
    _check_usable(key, info)
    assert key.private_key.public_key().public_numbers().e == 65537
    key.close()
    with pytest.raises(LockedError):
        _ = key.private_key


def test_generated_passphrase_pem_uses_600k_iterations_and_reads_in_cryptography() -> None:
    stored, info = generate(2048, bytearray(b"pw"))
    with stored:
        pem = bytes(stored.view)
    loaded = ser.load_pem_private_key(pem, b"pw")
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert _keys.fingerprint(loaded.public_key()) == info.fingerprint
    asn1 = subprocess.run(
        ["openssl", "asn1parse"], input=pem, capture_output=True, check=True, timeout=10
    ).stdout.decode()
    assert "hmacWithSHA256" in asn1
    assert "aes-256-cbc" in asn1
    iterations = next(x for x in asn1.splitlines() if "INTEGER" in x).rsplit(":", 1)[1]
    assert int(iterations, 16) >= 600_000


@pytest.mark.parametrize("bits", [0, 1024, 2047, 16385, 100_000])
def test_generate_refuses_bad_sizes(bits: int) -> None:
    with pytest.raises(BadKeyError, match="out of range"):
        generate(bits, None)


def test_generate_refuses_bad_sizes_in_the_child_too() -> None:
    """The worker validates on its own, whatever the parent checked."""
    with pytest.raises(BadKeyError, match="out of range"):
        _keyworker.run(_keyworker.Job(op="generate", bits=1024))


# --- import ------------------------------------------------------------------------------------


def test_import_public_client_key_without_password(client_keys: dict[str, Path]) -> None:
    pem = client_keys["plain"].read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    stored, info = import_pem(pem, None, None)
    assert info.public_key_pem.strip() == _public_pem(client_keys["plain"]).strip()
    assert not info.passphrase_protected
    with stored:
        key = unlock(stored, None)
    _check_usable(key, info)


def test_import_public_client_key_with_password(client_keys: dict[str, Path]) -> None:
    pem = client_keys["password"].read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(PassphraseRequiredError):
        import_pem(pem, None, None)
    with pytest.raises(BadPassphraseError):
        import_pem(pem, b"hunter2", None)
    password = "hunter2 ü".encode()
    # Keep the file's password as the passphrase (what `import` does by default) ...
    stored, info = import_pem(pem, memoryview(password), password)
    assert info.passphrase_protected
    assert info.public_key_pem.strip() == _public_pem(client_keys["password"]).strip()
    with stored:
        with pytest.raises(BadPassphraseError):
            unlock(stored, b"wrong")
        key = unlock(stored, password)
    _check_usable(key, info)
    # ... or store it under no passphrase at all.
    stored, info = import_pem(pem, password, b"")
    with stored:
        assert not _identity.is_passphrase_protected(stored)
        _check_usable(unlock(stored, None), info)


def _pkcs1(key: rsa.RSAPrivateKey, password: bytes | None) -> bytes:
    enc = ser.BestAvailableEncryption(password) if password else ser.NoEncryption()
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, enc)


def test_import_pkcs1_plain_and_legacy_encrypted() -> None:
    key = rsa.generate_private_key(65537, 2048)
    plain = _pkcs1(key, None)
    assert plain.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    legacy = _pkcs1(key, b"file pw")
    assert b"Proc-Type: 4,ENCRYPTED" in legacy
    fp = _keys.fingerprint(key.public_key())
    for pem, password in ((plain, None), (plain, b"ignored"), (legacy, b"file pw")):
        stored, info = import_pem(pem, password, b"new passphrase")
        assert info.fingerprint == fp
        with stored:
            assert _identity.is_passphrase_protected(stored)
            _check_usable(unlock(stored, b"new passphrase"), info)
    with pytest.raises(PassphraseRequiredError):
        import_pem(legacy, None, None)
    with pytest.raises(BadPassphraseError):
        import_pem(legacy, b"nope", None)


def test_import_refuses_what_is_not_a_usable_rsa_key() -> None:
    def pem_of(key: object) -> bytes:
        return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
            ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
        )

    small = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the point of the test
    cases = {
        "not an RSA key": pem_of(ec.generate_private_key(ec.SECP256R1())),
        "1024 bits": pem_of(small),
        "exponent 3": pem_of(rsa.generate_private_key(3, 2048)),
        "not a PEM private key": b"hello",
        "not a valid PEM private key": (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        ),
    }
    cases["public"] = small.public_key().public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo
    )
    for what, pem in cases.items():
        with pytest.raises(BadKeyError) as info:
            import_pem(pem, None, None)
        message = str(info.value)
        assert message == message.rstrip("."), what
        assert message[0].islower(), what


def test_import_refuses_inconsistent_key() -> None:
    """Full validation on import: a key whose CRT values do not match is refused."""
    key = rsa.generate_private_key(65537, 2048)
    n = key.private_numbers()
    bad = rsa.RSAPrivateNumbers(
        p=n.p, q=n.q, d=n.d, dmp1=n.dmp1 ^ 2, dmq1=n.dmq1, iqmp=n.iqmp,
        public_numbers=n.public_numbers,
    )  # fmt: skip
    pem = bad.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    with pytest.raises(BadKeyError):
        import_pem(pem, None, None)


# --- unlock ------------------------------------------------------------------------------------


def test_unlock_errors() -> None:
    key = rsa.generate_private_key(65537, 2048)
    der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    encrypted = _pkcs8.encrypt_der(der, b"pw", iterations=1000)
    with pytest.raises(PassphraseRequiredError):
        unlock(memoryview(encrypted), None)
    with pytest.raises(BadPassphraseError):
        unlock(memoryview(encrypted), b"")
    with SecretBuffer.from_bytes(encrypted) as stored:
        assert unlock(stored, b"pw").fingerprint == _keys.fingerprint(key.public_key())
    for garbage in (b"", b"garbage", _pkcs1(key, None)):
        with pytest.raises(CorruptIdentityError):
            unlock(memoryview(garbage), None)
    not_a_key = b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"
    with pytest.raises(CorruptIdentityError, match="not a valid key"):
        unlock(memoryview(not_a_key), None)


def test_unlock_leaves_the_stored_buffer_intact() -> None:
    stored, _info = generate(2048, None)
    with stored:
        before = bytes(stored.view)
        unlock(stored.view, None).close()
        assert stored.view == before


# --- the worker's own failure modes --------------------------------------------------------------


def test_worker_garbage_job_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="key worker error"):
        _keyworker.run(_keyworker.Job(op="bogus"))  # type: ignore[arg-type]


def test_worker_timeout_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="key worker failed"):
        _keyworker.run(_keyworker.Job(op="generate", bits=16384), timeout=0.5)


# --- figures -----------------------------------------------------------------------------------


# --- the documented migration, through the CLI ----------------------------------------------------


@pytest.mark.slow
def test_migration_from_client_keys_via_cli(
    make_agent: Callable[..., RunningAgent], client_keys: dict[str, Path]
) -> None:
    """docs/key-custody.md's commands, on files the public client wrote."""
    agent = make_agent()
    plain, protected = client_keys["plain"], client_keys["password"]

    out = agent.cli("import", str(plain))
    assert "no passphrase" in out.stderr
    assert agent.cli("public-key").stdout.strip() == _public_pem(plain).strip()
    assert agent.status().passphrase_protected is False

    agent.cli("import", str(plain), "--force", "--passphrase-stdin", input=b"new pw\n")
    assert agent.status().passphrase_protected is True
    agent.cli("lock")
    agent.cli("unlock", "--passphrase-stdin", input=b"new pw\n")

    refused = agent.cli(
        "import", str(protected), "--passphrase-stdin", input="hunter2 ü\n".encode(), check=False
    )
    assert refused.returncode == 1
    assert "identity exists" in refused.stderr
    wrong = agent.cli(
        "import", str(protected), "--force", "--passphrase-stdin", input=b"wrong\n", check=False
    )
    assert wrong.returncode == 1
    assert "wrong password" in wrong.stderr
    agent.cli(
        "import", str(protected), "--force", "--passphrase-stdin", input="hunter2 ü\n".encode()
    )
    assert agent.cli("public-key").stdout.strip() == _public_pem(protected).strip()
    agent.cli("lock")
    assert agent.status().state is p.State.LOCKED
    agent.cli("unlock", "--passphrase-stdin", input="hunter2 ü\n".encode())
    assert agent.status().state is p.State.UNLOCKED
