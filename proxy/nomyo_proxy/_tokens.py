"""Per-app bearer tokens: made once, shown once, stored only as hashes.

Rules of this module:

- A token is ``nmyp_`` plus 32 random bytes (URL-safe base64): guessing one is hopeless, so a
  plain SHA-256 is the right hash (a slow password hash would only slow every request down).
- The file (``proxy-tokens.json`` in the agent's state folder, 0600) holds names, hashes and
  dates, never a token; it is rewritten whole through ``nomyo_agent._files.atomic_write``.
- ``check`` compares digests in constant time and re-reads the file when it changed on disk, so
  ``nomyo-proxy token revoke`` takes effect on a running proxy at its next request.
- "last used" is kept to the minute: the file is rewritten at most once a minute per token,
  not on every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from nomyo_agent._files import atomic_write
from nomyo_proxy._errors import TokenError

__all__ = ["NAME_PATTERN", "TOKEN_PREFIX", "TokenInfo", "TokenStore", "default_token_path"]

TOKEN_PREFIX = "nmyp_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LAST_USED_RESOLUTION = 60.0


class TokenInfo(msgspec.Struct):
    """One token's record; ``digest`` is the hex SHA-256 of the token."""

    digest: str
    created: float
    last_used: float | None = None


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The token file. ``create``/``revoke``/``list`` for the CLI, ``check`` for the server."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._tokens: dict[str, TokenInfo] = {}
        # What identifies the version we read: a rename (new inode), a write or a chmod changes it.
        self._stamp: tuple[int, int, int, int] | None = None

    def _load(self) -> dict[str, TokenInfo]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._tokens, self._stamp = {}, None
            return self._tokens
        stamp = _stamp(st)
        if stamp != self._stamp:
            if st.st_mode & 0o077:
                raise TokenError(
                    f"{self.path} is readable or writable by others",
                    hint=f"chmod 600 {self.path}",
                )
            try:
                self._tokens = msgspec.json.decode(
                    self.path.read_bytes(), type=dict[str, TokenInfo]
                )
            except (OSError, msgspec.MsgspecError) as exc:
                raise TokenError(
                    f"cannot read the token file {self.path}: {exc}",
                    hint="fix or remove it, then create the tokens anew",
                ) from exc
            self._stamp = stamp
        return self._tokens

    def _save(self) -> None:
        atomic_write(self.path, msgspec.json.format(msgspec.json.encode(self._tokens)))
        self._stamp = _stamp(self.path.stat())

    def create(self, name: str) -> str:
        """A new token for ``name`` (returned once, never stored); refuses an existing name."""
        if not NAME_PATTERN.fullmatch(name):
            raise TokenError(
                f"invalid token name {name!r}",
                hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        tokens = self._load()
        if name in tokens:
            raise TokenError(
                f"a token named {name} exists already",
                hint=f"revoke it first: nomyo-proxy token revoke {name}",
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        tokens[name] = TokenInfo(digest=_digest(token), created=self._clock())
        self._save()
        return token

    def revoke(self, name: str) -> None:
        tokens = self._load()
        if tokens.pop(name, None) is None:
            raise TokenError(f"no token named {name}", hint="see nomyo-proxy token list")
        self._save()

    def list(self) -> dict[str, TokenInfo]:
        return dict(sorted(self._load().items()))

    def check(self, token: str) -> str | None:
        """The name of the app holding ``token``, or None if no stored token matches."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = _digest(token)
        found = None
        for name, info in self._load().items():
            # Every record is compared, so the time taken says nothing about which one matched.
            if hmac.compare_digest(info.digest, digest):
                found = name
        if found is not None:
            self._used(found)
        return found

    def _used(self, name: str) -> None:
        info = self._tokens[name]
        now = self._clock()
        if info.last_used is None or now - info.last_used >= LAST_USED_RESOLUTION:
            info.last_used = now
            with contextlib.suppress(OSError):  # a full disk must not refuse a valid token
                self._save()


def default_token_path() -> Path:
    from nomyo_agent._config import state_dir  # noqa: PLC0415 - platformdirs only when needed

    return state_dir() / "proxy-tokens.json"
