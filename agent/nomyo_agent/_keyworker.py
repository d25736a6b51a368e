"""Key generation and import in a child process, so that no key residue stays in the agent.

Why a child: generating a key, or parsing a user's PEM with ``cryptography``, leaves copies of
the private key in freed heap memory that nothing clears (TESTING.md, "Key residue"). A child
process takes that residue with it when it exits; the agent only ever receives the PKCS#8 PEM to
store, read straight into a ``SecretBuffer``.

Wire (stdin/stdout of ``python -m nomyo_agent._keyworker``, one exchange, then exit):

- request: one msgpack ``Job`` (passphrases as msgpack bin), then EOF.
- reply: a 4-byte big-endian length and one msgpack ``Result`` (metadata, or an error code with
  message and hint), then exactly ``Result.pem_len`` raw bytes of the PEM to store.

Rules: the child validates everything (RSA only, ``MIN_BITS`` to ``MAX_BITS``, exponent 65537
for generated keys and at least 65537 for imported ones, OpenSSL's full key check on import)
and re-reads the PEM it produced with our own ``_pkcs8`` reader before answering, so what the
agent stores is known to unlock. It hardens itself (no core dumps, not dumpable) first.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Literal

import msgspec

from nomyo_agent import protocol as p
from nomyo_agent._keys import MIN_BITS
from nomyo_agent._secret import SecretBuffer, wipe
from nomyo_agent.errors import (
    AgentError,
    BadKeyError,
    BadPassphraseError,
    InternalError,
    PassphraseRequiredError,
    from_reply,
)

__all__ = ["MAX_BITS", "Job", "Result", "run"]

MAX_BITS = 16384  # beyond this, generation takes minutes and no router expects it
MAX_PEM = 1 << 20
TIMEOUT = 900.0  # RSA-16384 generation can take minutes on a slow machine
_HEADER = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class Job(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    op: Literal["generate", "import"]
    bits: int = 0
    pem: bytes = b""
    file_password: bytes | None = None
    passphrase: bytes | None = None  # None or b"": store unencrypted


class Result(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ok: bool
    pem_len: int = 0
    public_key_pem: str = ""
    fingerprint: str = ""
    bits: int = 0
    passphrase_protected: bool = False
    code: p.ErrorCode = p.ErrorCode.INTERNAL
    message: str = ""
    hint: str = ""


# --- parent side -------------------------------------------------------------------------------


def _read_exact(pipe: object, into: memoryview) -> None:
    got = 0
    while got < len(into):
        n = pipe.readinto(into[got:])  # type: ignore[attr-defined]
        if not n:
            raise InternalError("the key worker stopped before sending the whole key")
        got += n


def _read_result(stdout: object, stderr: object) -> Result:
    """The reply's metadata; a child that died or spoke garbage is an ``InternalError``."""
    header = bytearray(_HEADER.size)
    try:
        _read_exact(stdout, memoryview(header))
        (length,) = _HEADER.unpack(header)
        if length > 1 << 16:
            raise InternalError(f"the key worker sent a {length}-byte header")
        body = bytearray(length)
        _read_exact(stdout, memoryview(body))
        return msgspec.msgpack.decode(body, type=Result)
    except (InternalError, msgspec.DecodeError) as exc:
        err = stderr.read().decode(errors="replace").strip().splitlines()[-3:]  # type: ignore[attr-defined]
        raise InternalError(
            f"the key worker failed: {' | '.join(err) or exc}",
            "this is a bug; please report it with the agent's log",
        ) from exc


def run(job: Job, timeout: float = TIMEOUT) -> tuple[SecretBuffer, Result]:
    """Run ``job`` in a fresh child; the stored-PEM buffer is the caller's to close.

    Errors the child reports come back as the same ``AgentError`` subclasses.
    """
    # Sized up front so that encoding never grows (reallocates) the buffer: a reallocation would
    # leave a partial copy of the passphrases in freed memory, out of reach of ``wipe``.
    secrets = (job.pem, job.file_password or b"", job.passphrase or b"")
    request = bytearray(sum(len(x) for x in secrets) + 1024)
    msgspec.msgpack.Encoder().encode_into(job, request)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nomyo_agent._keyworker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        bufsize=0, env=env, cwd=_PACKAGE_ROOT,
    )  # fmt: skip
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    stored: SecretBuffer | None = None
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            proc.stdin.write(request)  # raw pipe: no Python-side buffer keeps a copy
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died; its stderr says why
        finally:
            wipe(request)
        result = _read_result(proc.stdout, proc.stderr)
        if not result.ok:
            raise from_reply(p.Error(code=result.code, message=result.message, hint=result.hint))
        if not 0 < result.pem_len <= MAX_PEM:
            raise InternalError("the key worker sent an implausible key length")
        stored = SecretBuffer(result.pem_len)
        _read_exact(proc.stdout, stored.view)
        return stored, result
    except BaseException:
        if stored is not None:
            stored.close()
        raise
    finally:
        killer.cancel()
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# --- child side --------------------------------------------------------------------------------


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
    out.write(_HEADER.pack(len(body)) + body)
    out.write(stored)
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve())
