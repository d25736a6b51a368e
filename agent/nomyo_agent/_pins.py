"""Router key pins: trust on first use per origin, as ``known_hosts`` does for ssh.

Rules: an origin is ``scheme://host:port`` (lower-case, default port dropped, no path); the pin
is the key's fingerprint. A different key for a pinned origin is refused and remembered as
*pending*, so that ``pins accept ORIGIN`` can accept exactly the key the user was shown. The file
is JSON, written atomically with mode 0600; a corrupt file is an error, never an empty trust list.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from nomyo_agent._files import write_private
from nomyo_agent.errors import (
    BadRequestError,
    CorruptIdentityError,
    NotPinnedError,
    PinMismatchError,
)
from nomyo_agent.protocol import PinInfo

__all__ = ["PinStore", "normalize_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(url: str) -> str:
    """``HTTPS://Router.Example:443/v1`` -> ``https://router.example``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BadRequestError(f"not a router URL: {url!r}") from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise BadRequestError(f"not an http(s) router URL: {url!r}")
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class _Record(msgspec.Struct, forbid_unknown_fields=True):
    fingerprint: str
    first_seen: float
    pending_fingerprint: str | None = None


class PinStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pins = self._read()

    def _read(self) -> dict[str, _Record]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return msgspec.json.decode(data, type=dict[str, _Record])
        except msgspec.MsgspecError as exc:
            raise CorruptIdentityError(
                f"the router pins file {self.path} is corrupt: {exc}",
                hint=f"fix or remove {self.path} (all routers are then trusted anew on first use)",
            ) from exc

    def _write(self) -> None:
        data = json.dumps(msgspec.to_builtins(self._pins), indent=1, sort_keys=True).encode()
        write_private(self.path, data)

    def check(self, origin: str, fingerprint: str, now: float) -> str:
        """``"new"`` (pinned now) or ``"known"``; raises ``PinMismatchError`` for another key."""
        record = self._pins.get(origin)
        if record is None:
            self._pins[origin] = _Record(fingerprint=fingerprint, first_seen=now)
            self._write()
            return "new"
        if record.fingerprint == fingerprint:
            return "known"
        if record.pending_fingerprint != fingerprint:
            record.pending_fingerprint = fingerprint
            self._write()
        raise PinMismatchError(
            f"the router key of {origin} changed: pinned {record.fingerprint[:16]}, "
            f"offered {fingerprint[:16]}",
            hint=f"if the router really rotated its key, run `nomyo-agent pins accept {origin}`",
            origin=origin,
            fingerprint=fingerprint,
        )

    def accept(self, origin: str, fingerprint: str | None, now: float) -> str:
        """Pin ``fingerprint`` (else the pending one) for ``origin``; returns what is pinned."""
        record = self._pins.get(origin)
        chosen = fingerprint or (record.pending_fingerprint if record else None)
        if chosen is None:
            raise NotPinnedError(
                f"no changed key is waiting for {origin}",
                hint="a key is pinned on first use; `nomyo-agent pins list` shows the pins",
            )
        self._pins[origin] = _Record(fingerprint=chosen, first_seen=now)
        self._write()
        return chosen

    def forget(self, origin: str) -> None:
        if self._pins.pop(origin, None) is None:
            raise NotPinnedError(f"{origin} is not pinned")
        self._write()

    def list(self) -> list[PinInfo]:
        return [
            PinInfo(
                origin=origin,
                fingerprint=r.fingerprint,
                first_seen=r.first_seen,
                pending_fingerprint=r.pending_fingerprint,
            )
            for origin, r in sorted(self._pins.items())
        ]
