"""The agent's settings: defaults, then ``config.toml``, then environment, then command line.

``$XDG_CONFIG_HOME/nomyo-agent/config.toml`` (platformdirs elsewhere), all keys optional::

    [agent]
    idle_timeout = 1800      # seconds without a seal/open before the key is dropped; 0 = off
    max_lifetime = 43200     # seconds after unlock before the key is dropped; 0 = off
    pin_policy = "tofu"      # "tofu": pin each router origin's key on first use; "off"
    auto_unlock = true       # an identity with no passphrase unlocks itself on first use after
                             # start or a timeout (an explicit `lock` holds until `unlock`)
    pinentry = "/usr/bin/pinentry-gtk-2"   # default: pinentry on PATH (pinentry-mac on macOS)
    keyring_service = "nomyo-agent"
    keystore = "keyring"     # where the private key lives: "keyring" (the OS keyring), or on a
                             # headless machine "file": passphrase-encrypted PKCS#8 in
                             # identity.key in the state folder, 0600 (a passphrase is required)

Environment: ``NOMYO_AGENT_PINENTRY``, ``NOMYO_AGENT_KEYRING_SERVICE``, ``NOMYO_AGENT_KEYSTORE``.
An unreadable file or an unknown key is an error that names the file: a typo must not silently
weaken a timeout.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs

from nomyo_agent.errors import BadRequestError

__all__ = [
    "KEYSTORES",
    "PIN_POLICIES",
    "Config",
    "ConfigError",
    "config_path",
    "load_config",
    "state_dir",
]

APP = "nomyo-agent"
PIN_POLICIES = ("tofu", "off")
KEYSTORES = ("keyring", "file")  # the same as _keystore.KEYSTORES, without importing keyring


class ConfigError(BadRequestError):
    """config.toml or a setting is invalid."""


def config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "config.toml"


def state_dir() -> Path:
    """Router pins, the public half of the identity, the audit log; the private key only with
    ``keystore = "file"`` (and then passphrase-encrypted)."""
    return Path(platformdirs.user_state_dir(APP, appauthor=False))


@dataclasses.dataclass(frozen=True)
class Config:
    idle_timeout: float = 1800.0
    max_lifetime: float = 43200.0
    pin_policy: str = "tofu"
    auto_unlock: bool = True
    pinentry: str | None = None
    keyring_service: str = APP
    keystore: str = "keyring"
    state_dir: Path = dataclasses.field(default_factory=state_dir)

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "max_lifetime"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(
                    f"{name} must be a number of seconds >= 0 (0 = off), not {value!r}"
                )
        if self.pin_policy not in PIN_POLICIES:
            raise ConfigError(f"pin_policy must be one of {', '.join(PIN_POLICIES)}")
        if self.keystore not in KEYSTORES:
            raise ConfigError(
                f"keystore must be one of {', '.join(KEYSTORES)}, not {self.keystore!r}",
                hint='"file" keeps the key passphrase-encrypted in the state folder (headless)',
            )

    def replace(self, **changes: Any) -> Config:
        """A copy with the given settings; ``None`` values leave a setting as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    section = data.get("agent", {})
    known = {f.name for f in dataclasses.fields(Config)} - {"state_dir"}
    unknown = set(section) - known
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}",
            hint=f"known settings: {', '.join(sorted(known))}",
        )
    return dict(section)


def load_config(path: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    settings = _from_file(path or config_path())
    if env.get("NOMYO_AGENT_PINENTRY"):
        settings["pinentry"] = env["NOMYO_AGENT_PINENTRY"]
    if env.get("NOMYO_AGENT_KEYRING_SERVICE"):
        settings["keyring_service"] = env["NOMYO_AGENT_KEYRING_SERVICE"]
    if env.get("NOMYO_AGENT_KEYSTORE"):
        settings["keystore"] = env["NOMYO_AGENT_KEYSTORE"]
    try:
        return Config(**settings)
    except TypeError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
