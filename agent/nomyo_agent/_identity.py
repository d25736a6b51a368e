"""The agent's identity: make or import one (in a child), unlock it (here), describe it (on disk).

Rules of this module:

- ``generate`` and ``import_pem`` never parse or create a private key in this process: the key
  worker child does (``_keyworker``), validates it fully, and hands back only the PKCS#8 PEM to
  store, straight into a ``SecretBuffer``. Their residue dies with the child.
- ``unlock`` decrypts the stored PEM with our own PKCS#8 reader into a ``SecretBuffer``, loads the
  key from that buffer without OpenSSL's validation (done once at generate/import; about 280 ms
  at 4096 bits), then zeroes the buffer. No ``bytes`` copy of the key is made here.
- ``UnlockedKey.close`` drops the only references to the key object; OpenSSL clears the key's
  numbers when it frees them.
- ``IdentityInfo`` is public data (public key, fingerprint, bits): it is kept in a JSON file next
  to the pins so that ``status`` works while locked.

Example::

    stored, info = generate(4096, b"correct horse")
    keystore.save(stored.view)
    info.save(state_dir / "identity.json")
    key = unlock(stored.view, b"correct horse")
    stored.close()
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_private_key

from nomyo_agent import _keys, _keyworker, _pkcs8
from nomyo_agent._files import atomic_write
from nomyo_agent._secret import SecretBuffer
from nomyo_agent.errors import (
    BadKeyError,
    BadPassphraseError,
    CorruptIdentityError,
    LockedError,
    PassphraseRequiredError,
)

__all__ = [
    "IdentityInfo",
    "UnlockedKey",
    "generate",
    "import_pem",
    "is_passphrase_protected",
    "unlock",
]

Secret = bytes | bytearray | memoryview


@dataclass(frozen=True)
class IdentityInfo:
    """The public facts of the identity, readable while the agent is locked."""

    public_key_pem: str
    fingerprint: str  # SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex
    bits: int
    passphrase_protected: bool
    created: float  # wall-clock Unix seconds of generate/import

    def save(self, path: Path) -> None:
        """Write as JSON, atomically (temporary file, then rename), mode 0600."""
        atomic_write(path, json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls, path: Path) -> IdentityInfo | None:
        """The saved facts; None if there is no file; ``CorruptIdentityError`` if unreadable."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CorruptIdentityError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
            info = cls(
                public_key_pem=str(data["public_key_pem"]),
                fingerprint=str(data["fingerprint"]),
                bits=int(data["bits"]),
                passphrase_protected=bool(data["passphrase_protected"]),
                created=float(data["created"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptIdentityError(
                f"{path} is damaged",
                f"delete {path} and re-import the key with `nomyo-agent import PATH --force`",
            ) from exc
        if (
            not info.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
            or len(info.fingerprint) != 64
        ):
            raise CorruptIdentityError(f"{path} does not describe a public key")
        return info


def _info(result: _keyworker.Result) -> IdentityInfo:
    return IdentityInfo(
        public_key_pem=result.public_key_pem,
        fingerprint=result.fingerprint,
        bits=result.bits,
        passphrase_protected=result.passphrase_protected,
        created=time.time(),
    )


def _opt(secret: Secret | None) -> bytes | None:
    # msgspec needs bytes-like values it can serialise; a memoryview of a SecretBuffer is
    # encoded straight from the buffer, with no copy here.
    return secret if secret is None else memoryview(secret)  # type: ignore[return-value]


def generate(bits: int, passphrase: Secret | None) -> tuple[SecretBuffer, IdentityInfo]:
    """A new RSA identity made in the key worker: (PEM to store, its public facts).

    An empty or None ``passphrase`` stores the key unencrypted (the keyring's protection only).
    """
    if not _keys.MIN_BITS <= bits <= _keyworker.MAX_BITS:
        raise BadKeyError(
            f"{bits} bits is out of range; choose {_keys.MIN_BITS} to {_keyworker.MAX_BITS}",
            "4096 (the default) is what the nomyo client uses",
        )
    stored, result = _keyworker.run(
        _keyworker.Job(op="generate", bits=bits, passphrase=_opt(passphrase))
    )
    return stored, _info(result)


def import_pem(
    pem: bytes, file_password: Secret | None, passphrase: Secret | None
) -> tuple[SecretBuffer, IdentityInfo]:
    """Import a PEM private key (PKCS#1 or PKCS#8, encrypted or not) via the key worker.

    ``file_password`` opens the file; ``passphrase`` is what to store the key under (empty or
    None: unencrypted). This is how the nomyo client's ``client_keys/private_key.pem`` moves in.
    """
    stored, result = _keyworker.run(
        _keyworker.Job(
            op="import",
            pem=pem,
            file_password=_opt(file_password),
            passphrase=_opt(passphrase),
        )
    )
    return stored, _info(result)


def is_passphrase_protected(stored: SecretBuffer | memoryview) -> bool:
    """Whether the stored PEM is encrypted (unlock then needs the passphrase)."""
    view = stored.view if isinstance(stored, SecretBuffer) else stored
    try:
        return _pkcs8.is_encrypted(view)
    except _pkcs8.Pkcs8Error as exc:
        raise CorruptIdentityError("the identity in the keyring is not a PEM key") from exc


class UnlockedKey:
    """The unlocked identity. ``close`` drops it; using it afterwards raises ``LockedError``."""

    __slots__ = ("_private", "_public", "bits", "fingerprint")

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._private: rsa.RSAPrivateKey | None = private_key
        self._public: rsa.RSAPublicKey | None = private_key.public_key()
        self.fingerprint = _keys.fingerprint(self._public)
        self.bits = private_key.key_size

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        if self._private is None:
            raise LockedError("the key was locked")
        return self._private

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        if self._public is None:
            raise LockedError("the key was locked")
        return self._public

    def close(self) -> None:
        """Drop our references so that OpenSSL frees (and clears) the key."""
        self._private = None
        self._public = None

    def __repr__(self) -> str:
        state = "locked" if self._private is None else "unlocked"
        return f"<UnlockedKey RSA-{self.bits} {self.fingerprint[:16]} {state}>"


def unlock(stored: SecretBuffer | memoryview, passphrase: Secret | None) -> UnlockedKey:
    """Load the stored PEM (the keyring's value) into a usable key; nothing else is kept."""
    view = stored.view if isinstance(stored, SecretBuffer) else stored
    if is_passphrase_protected(view) and passphrase is None:
        raise PassphraseRequiredError("the identity is protected by a passphrase")
    try:
        der = _pkcs8.decode_pem(view, passphrase)
    except _pkcs8.WrongPassphrase as exc:
        raise BadPassphraseError("wrong passphrase") from exc
    except _pkcs8.Pkcs8Error as exc:
        raise CorruptIdentityError(f"the identity in the keyring is unreadable ({exc})") from exc
    try:
        key = load_der_private_key(der.view, None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CorruptIdentityError("the identity in the keyring is not a valid key") from exc
    finally:
        der.close()
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CorruptIdentityError("the identity in the keyring is not an RSA key")
    return UnlockedKey(key)
