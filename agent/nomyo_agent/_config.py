"""The agent's settings: defaults, then ``config.toml``, then environment, then command line.

``$XDG_CONFIG_HOME/nomyo-agent/config.toml`` (``paths.config_path``: the other platforms' folders
are there too), all keys optional::

    [agent]
    idle_timeout = 1800      # seconds without a seal/open before the key is dropped; 0 = off
    max_lifetime = 43200     # seconds after unlock before the key is dropped; 0 = off
    pin_policy = "tofu"      # "tofu": pin each router origin's key on first use; "off"
    auto_unlock = true       # an identity with no passphrase unlocks itself on first use after
                             # start or a timeout (an explicit `lock` holds until `unlock`)
    pinentry = "/usr/bin/pinentry-gtk-2"   # default: pinentry on PATH (pinentry-mac on macOS)
    keyring_service = "nomyo-agent"
    connection_timeout = 600 # seconds before an idle client connection is closed; 0 = never
    keystore = "keyring"     # where the private key lives: "keyring" (the OS keyring), or on a
                             # headless machine "file": passphrase-encrypted PKCS#8 in
                             # identity.key in the state folder, 0600 (a passphrase is required)
    lock_on = ["screen", "suspend"]   # lock on screen lock / session end, and before sleep
                             # (Linux, D-Bus); [] = neither
    unlock_on_demand = false # a seal/open that finds the identity locked asks the asking app's
                             # terminal or display for the passphrase (pinentry), as gpg-agent
    prompt_timeout = 60      # seconds an on-demand prompt waits before it counts as refused
    confirm = "off"          # "first-use": ask (pinentry CONFIRM) before an app first uses the
                             # identity after an unlock; "every-use": before every use

Environment: ``NOMYO_AGENT_PINENTRY``, ``NOMYO_AGENT_KEYRING_SERVICE``, ``NOMYO_AGENT_KEYSTORE``.
An unreadable file, an unknown key or a value of the wrong type is an error that names the file,
the key and the type expected: a typo must not silently weaken a timeout. Types are exact
(``auto_unlock = "false"`` is a string, not a boolean; ``true`` is not a number) and durations
finite, from 0 to ``MAX_SECONDS``: ``nan`` or ``inf`` would turn a lock off without saying so.

``nomyo-agent serve`` reads the file again on SIGHUP (``Config`` is immutable: the server swaps
the whole object, or keeps the old one when the new file is refused).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from nomyo_agent.errors import ConfigError
from nomyo_agent.paths import APP, config_path, state_dir

__all__ = [
    "KEYSTORES",
    "MAX_SECONDS",
    "PIN_POLICIES",
    "Config",
    "ConfigError",
    "config_path",
    "load_config",
    "parse_seconds",
    "state_dir",
]

PIN_POLICIES = ("tofu", "off")
MAX_SECONDS = 366 * 24 * 3600  # a year: longer is "off" in all but name, and 0 already says off
KEYSTORES = ("keyring", "file")  # the same as _keystore.KEYSTORES, without importing keyring
LOCK_ON = ("screen", "suspend")
CONFIRM = ("off", "first-use", "every-use")


@dataclasses.dataclass(frozen=True)
class Config:
    idle_timeout: float = 1800.0
    max_lifetime: float = 43200.0
    pin_policy: str = "tofu"
    auto_unlock: bool = True
    pinentry: str | None = None
    keyring_service: str = APP
    connection_timeout: float = 600.0
    keystore: str = "keyring"
    state_dir: Path = dataclasses.field(default_factory=state_dir)
    lock_on: tuple[str, ...] = LOCK_ON
    unlock_on_demand: bool = False
    prompt_timeout: float = 60.0
    confirm: str = "off"

    def __post_init__(self) -> None:
        for name in _KINDS:
            problem = _check(name, getattr(self, name))
            if problem:
                hint = None
                if name == "keystore":
                    hint = '"file": the key passphrase-encrypted in the state folder (headless)'
                raise ConfigError(f"{name} {problem}", hint=hint)
        # Stored as float: status and the timers do arithmetic on it, and an int 0 from the file
        # is the same setting as 0.0.
        object.__setattr__(self, "idle_timeout", float(self.idle_timeout))
        object.__setattr__(self, "max_lifetime", float(self.max_lifetime))
        object.__setattr__(self, "connection_timeout", float(self.connection_timeout))
        object.__setattr__(self, "prompt_timeout", float(self.prompt_timeout))
        object.__setattr__(self, "lock_on", tuple(self.lock_on))  # TOML gives a list

    def replace(self, **changes: Any) -> Config:
        """A copy with the given settings; ``None`` values leave a setting as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _seconds_problem(value: object) -> str | None:
    # bool is an int to Python, but `idle_timeout = true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds (0 = off), not {type(value).__name__} {value!r}"
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        return f"must be a finite number of seconds from 0 (off) to {MAX_SECONDS}, not {value!r}"
    return None


def _check(name: str, value: object) -> str | None:
    """What is wrong with ``value`` for setting ``name`` (None: nothing)."""
    kind = _KINDS[name]
    if kind == "seconds":
        return _seconds_problem(value)
    if kind == "bool":
        if not isinstance(value, bool):
            return f"must be true or false (a TOML boolean), not {type(value).__name__} {value!r}"
        return None
    if kind == "pin_policy":
        if value not in PIN_POLICIES:
            return f"must be one of {', '.join(PIN_POLICIES)} (a string), not {value!r}"
        return None
    if kind == "lock_on":
        if not isinstance(value, (list, tuple)) or not all(e in LOCK_ON for e in value):
            return f"must be a list of {', '.join(LOCK_ON)} (or [] for none), not {value!r}"
        return None
    if kind == "confirm":
        if value not in CONFIRM:
            return f"must be one of {', '.join(CONFIRM)} (a string), not {value!r}"
        return None
    if kind == "prompt seconds":
        problem = _seconds_problem(value)
        if problem or value == 0:
            return f"must be a number of seconds > 0, up to {MAX_SECONDS}, not {value!r}"
        return None
    if kind == "keystore":
        if value not in KEYSTORES:
            return f"must be one of {', '.join(KEYSTORES)} (a string), not {value!r}"
        return None
    optional = kind == "optional str"
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        return f"must be a non-empty string, not {type(value).__name__} {value!r}"
    return None


_KINDS = {
    "idle_timeout": "seconds",
    "max_lifetime": "seconds",
    "pin_policy": "pin_policy",
    "auto_unlock": "bool",
    "pinentry": "optional str",
    "keyring_service": "str",
    "connection_timeout": "seconds",
    "keystore": "keystore",
    "lock_on": "lock_on",
    "unlock_on_demand": "bool",
    "prompt_timeout": "prompt seconds",
    "confirm": "confirm",
}


def parse_seconds(text: str) -> float:
    """A duration from the command line (``--idle-timeout``), held to the file's rules."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    problem = _seconds_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    section = data.get("agent", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: agent must be a table ([agent]), not {section!r}")
    unknown = set(section) - set(_KINDS)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}",
            hint=f"known settings: {', '.join(sorted(_KINDS))}",
        )
    for name, value in section.items():
        problem = _check(name, value)
        if problem:
            raise ConfigError(f"{path}: {name} {problem}", hint=f"fix {name} in {path}")
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
