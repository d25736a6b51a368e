"""The key worker's child side: ``python -m nomyo_agent._keyworker_child`` (see ``_keyworker``
for the wire and the parent side).

Rules: it reads one ``Job`` from stdin, hardens itself first, validates everything (RSA only,
``MIN_BITS`` to ``MAX_BITS``, exponent 65537 for generated keys and at least 65537 for imported
ones, OpenSSL's full key check on import), re-reads the PEM it produced with our own ``_pkcs8``
reader, and answers with one ``Result`` and the PEM. ``cryptography`` is imported only here, so
the residue it leaves goes away with this process. An error it cannot name is reported by its
type only, never with key material.
"""

from __future__ import annotations

import sys

import msgspec

from nomyo_agent._keys import MIN_BITS
from nomyo_agent._keyworker import HEADER, MAX_BITS, MAX_PEM, Job, Result
from nomyo_agent.errors import (
    AgentError,
    BadKeyError,
    BadPassphraseError,
    InternalError,
    PassphraseRequiredError,
)

__all__ = ["handle"]


def _encrypted(pem: bytes) -> bool:
    """PKCS#8 ``ENCRYPTED PRIVATE KEY``, or PKCS#1 with the legacy ``Proc-Type: 4,ENCRYPTED``."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem or b"Proc-Type: 4,ENCRYPTED" in pem


_NOT_RSA_HINT = (
    "nomyo identities are RSA keys (2048 bits or more): make one with `nomyo-agent keygen`, "
    "or import the nomyo client's client_keys/private_key.pem"
)


def _not_a_private_key(pem: bytes) -> BadKeyError:
    """The refusal for a file that is not a PEM private key we can read, with what it is."""
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in pem:
        return BadKeyError(
            "this is an OpenSSH private key; the agent imports PEM (PKCS#1 or PKCS#8)",
            "convert a copy first: `cp KEY key.pem && ssh-keygen -p -m PKCS8 -f key.pem`, "
            "then import key.pem (an RSA key only)",
        )
    if b"PUBLIC KEY-----" in pem or pem.lstrip().startswith(b"ssh-"):
        return BadKeyError(
            "this is a public key; importing needs the private key",
            "import the private key file, e.g. client_keys/private_key.pem beside public_key.pem",
        )
    if len(pem) > MAX_PEM:
        return BadKeyError(
            f"the file is over {MAX_PEM} bytes, too large to be a PEM private key",
            "check the path: it should name a private key file such as private_key.pem",
        )
    return BadKeyError(
        "the file is not a PEM private key",
        "check the path: a key file starts with -----BEGIN PRIVATE KEY----- "
        "(or RSA PRIVATE KEY, or ENCRYPTED PRIVATE KEY)",
    )


def _load_user_pem(pem: bytes, password: bytes | None) -> object:
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415 - child only
    from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: PLC0415

    if len(pem) > MAX_PEM or b"PRIVATE KEY-----" not in pem or b"OPENSSH PRIVATE KEY" in pem:
        raise _not_a_private_key(pem)
    encrypted = _encrypted(pem)
    if encrypted and not password:
        raise PassphraseRequiredError(
            "the key file is encrypted",
            "give the key file's password (the one used with the nomyo client)",
        )
    try:
        # Full OpenSSL validation here, once; unlock later skips it (about 280 ms at 4096 bits).
        return load_pem_private_key(pem, password if encrypted else None)
    except UnsupportedAlgorithm as exc:
        raise BadKeyError("the key file uses an unsupported key type or cipher") from exc
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise BadPassphraseError(
                "wrong password for the key file (or the file is damaged)",
                "try again with the password the key file was saved with",
            ) from exc
        raise BadKeyError("the file is not a valid PEM private key") from exc


def _check(key: object, *, generated: bool) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415 - child only

    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadKeyError(
            f"the key is not an RSA key ({type(key).__name__.lstrip('_')})", _NOT_RSA_HINT
        )
    bits, e = key.key_size, key.public_key().public_numbers().e
    if not MIN_BITS <= bits <= MAX_BITS:
        raise BadKeyError(
            f"the key has {bits} bits; {MIN_BITS} to {MAX_BITS} are accepted",
            "routers refuse keys under 2048 bits; generate one with `nomyo-agent keygen`",
        )
    if (generated and e != 65537) or e < 65537 or e % 2 == 0:
        raise BadKeyError(f"the key's public exponent {e} is unsafe (65537 expected)")


def handle(job: Job) -> tuple[bytes | bytearray, Result]:
    """Do ``job``; returns the PEM to store and the metadata (runs in the child)."""
    from cryptography.hazmat.primitives import serialization as ser  # noqa: PLC0415 - child only
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    from nomyo_agent import _keys, _pkcs8  # noqa: PLC0415

    if job.op == "generate":
        if not MIN_BITS <= job.bits <= MAX_BITS:
            raise BadKeyError(f"{job.bits} bits is out of range; choose {MIN_BITS} to {MAX_BITS}")
        key: object = rsa.generate_private_key(65537, job.bits)
    else:
        key = _load_user_pem(job.pem, job.file_password)
    _check(key, generated=job.op == "generate")
    assert isinstance(key, rsa.RSAPrivateKey)
    der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    protected = bool(job.passphrase)
    if job.passphrase:
        stored: bytes = _pkcs8.encrypt_der(der, job.passphrase)
    else:
        stored = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    with _pkcs8.decode_pem(stored, job.passphrase or None) as check:
        if check.view != der:  # pragma: no cover - our writer and reader disagree: a bug
            raise InternalError("the stored key does not read back")
    public = key.public_key()
    return stored, Result(
        ok=True,
        pem_len=len(stored),
        public_key_pem=_keys.public_pem(public),
        fingerprint=_keys.fingerprint(public),
        bits=key.key_size,
        passphrase_protected=protected,
    )


def _serve() -> int:
    from nomyo_agent import _hardening  # noqa: PLC0415 - child only

    _hardening.harden_child()
    data = sys.stdin.buffer.read()
    out = sys.stdout.buffer
    stored: bytes | bytearray = b""
    try:
        job = msgspec.msgpack.decode(data, type=Job)
        stored, result = handle(job)
    except AgentError as exc:
        result = Result(ok=False, code=exc.code, message=exc.message, hint=exc.hint)
    except Exception as exc:  # anything else is a bug: say what, never the key
        result = Result(ok=False, message=f"key worker error: {type(exc).__name__}")
    body = msgspec.msgpack.encode(result)
    out.write(HEADER.pack(len(body)) + body)
    out.write(stored)
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve())
