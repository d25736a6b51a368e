"""Per-app bearer tokens: made once, shown once, stored only as hashes.

Rules of this module:

- A token is ``nmyp_`` plus 32 random bytes (URL-safe base64): guessing one is hopeless, so a
  plain SHA-256 is the right hash (a slow password hash would only slow every request down).
- The file (``proxy-tokens.json`` in the agent's state folder, 0600) holds names, hashes and
  dates, never a token; it is rewritten whole through ``nomyo_agent._files.atomic_write``.
- Every change (create, revoke, a use recorded) is a read-modify-write under an exclusive lock
  on ``proxy-tokens.json.lock``, re-reading the file inside the lock: a revoke by the CLI that
  lands while a proxy records a use stays revoked, and two changes never drop each other.
- ``check`` compares digests in constant time and re-reads the file when it changed on disk, so
  ``nomyo-proxy token revoke`` takes effect on a running proxy at its next request.
- "last used" is kept to the minute: the file is rewritten at most once a minute per token,
  not on every request. The proxy hands that write (a lock, a rewrite, an fsync: milliseconds,
  or far more on a busy disk) to a thread (``background``), so no request waits for it; the
  CLI and the tests write right away.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from nomyo_agent._files import atomic_write, exclusive_lock
from nomyo_agent.paths import state_dir
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

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        background: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._background = background  # runs a use's write elsewhere; None: right away
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

    @contextlib.contextmanager
    def _change(self) -> Iterator[dict[str, TokenInfo]]:
        """Lock the file against other writers, re-read it, let the caller change it, write it.

        Not written when the caller raises. The lock file sits beside the token file, because
        the token file itself is replaced (renamed over) on every write.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(self.path.with_name(self.path.name + ".lock")):
            self._stamp = None  # whatever is on disk now, even if it looks unchanged
            tokens = self._load()
            yield tokens
            atomic_write(self.path, msgspec.json.format(msgspec.json.encode(tokens)))
            self._stamp = _stamp(self.path.stat())

    def create(self, name: str) -> str:
        """A new token for ``name`` (returned once, never stored); refuses an existing name."""
        if not NAME_PATTERN.fullmatch(name):
            raise TokenError(
                f"invalid token name {name!r}",
                hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        with self._change() as tokens:
            if name in tokens:
                raise TokenError(
                    f"a token named {name} exists already",
                    hint=f"revoke it first: nomyo-proxy token revoke {name}",
                )
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            tokens[name] = TokenInfo(digest=_digest(token), created=self._clock())
        return token

    def revoke(self, name: str) -> None:
        with self._change() as tokens:
            if tokens.pop(name, None) is None:
                raise TokenError(f"no token named {name}", hint="see nomyo-proxy token list")

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
        if info.last_used is not None and now - info.last_used < LAST_USED_RESOLUTION:
            return
        info.last_used = now  # at once in memory: this minute's next requests write nothing
        write = functools.partial(_record_use, self.path, name, info.digest, now)
        if self._background is None:
            write()
        else:
            self._background(write)


def _record_use(path: Path, name: str, digest: str, now: float) -> None:
    """Write that ``name`` was used at ``now``, unless it was revoked or replaced meanwhile.

    Through a store of its own, so that a thread running it never touches the cache of the
    store that checks tokens (which sees the new file at its next check). A full disk or a
    file broken since the check must not refuse a valid token; the next check reports a broken
    file."""
    with contextlib.suppress(OSError, TokenError), TokenStore(path)._change() as tokens:
        current = tokens.get(name)
        if current is not None and current.digest == digest:  # not revoked meanwhile
            current.last_used = now


def default_token_path() -> Path:
    return state_dir() / "proxy-tokens.json"
