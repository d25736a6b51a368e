"""Key generation and import in a child process, so that no key residue stays in the agent.

Why a child: generating a key, or parsing a user's PEM with ``cryptography``, leaves copies of
the private key in freed heap memory that nothing clears (TESTING.md, "Key residue"). A child
process takes that residue with it when it exits; the agent only ever receives the PKCS#8 PEM to
store, read straight into a ``SecretBuffer``.

Wire (stdin/stdout of ``python -m nomyo_agent._keyworker_child``, one exchange, then exit):

- request: one msgpack ``Job`` (passphrases as msgpack bin), then EOF.
- reply: a 4-byte big-endian length and one msgpack ``Result`` (metadata, or an error code with
  message and hint), then exactly ``Result.pem_len`` raw bytes of the PEM to store.

Rules: the child validates everything (RSA only, ``MIN_BITS`` to ``MAX_BITS``, exponent 65537
for generated keys and at least 65537 for imported ones, OpenSSL's full key check on import)
and re-reads the PEM it produced with our own ``_pkcs8`` reader before answering, so what the
agent stores is known to unlock. It hardens itself (no core dumps, not dumpable) first.

This module holds the wire and the parent side; the child's side is ``_keyworker_child``.
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
from nomyo_agent._secret import SecretBuffer, wipe
from nomyo_agent.errors import InternalError, from_reply

__all__ = ["HEADER", "MAX_BITS", "MAX_PEM", "Job", "Result", "run"]

MAX_BITS = 16384  # beyond this, generation takes minutes and no router expects it
MAX_PEM = 1 << 20
TIMEOUT = 900.0  # RSA-16384 generation can take minutes on a slow machine
HEADER = struct.Struct(">I")  # the length before a Result
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
    header = bytearray(HEADER.size)
    try:
        _read_exact(stdout, memoryview(header))
        (length,) = HEADER.unpack(header)
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
        [sys.executable, "-m", "nomyo_agent._keyworker_child"],
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
