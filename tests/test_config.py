"""config.toml, environment and flags: precedence, and typos that must not pass silently."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nomyo_agent._config import Config, ConfigError, load_config


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path / "missing.toml", environ={})
    assert (config.idle_timeout, config.max_lifetime, config.pin_policy) == (1800, 43200, "tofu")
    assert config.pinentry is None


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[agent]\nidle_timeout = 60\npinentry = "/bin/a"\npin_policy = "off"\n')
    config = load_config(path, environ={"NOMYO_AGENT_PINENTRY": "/bin/b"})
    assert (config.idle_timeout, config.pinentry, config.pin_policy) == (60, "/bin/b", "off")
    flagged = config.replace(idle_timeout=0, pinentry=None)
    assert (flagged.idle_timeout, flagged.pinentry) == (0, "/bin/b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agent]\nidle_timout = 5\n", "unknown setting"),
        ("[agent]\nidle_timeout = -1\n", "from 0 .off. to"),
        ('[agent]\npin_policy = "always"\n', "pin_policy"),
        ("[agent\n", "cannot read"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_flags_are_validated_too() -> None:
    with pytest.raises(ConfigError):
        Config().replace(max_lifetime=-5)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[agent]\nidle_timeout = nan\n", "idle_timeout", "finite number of seconds"),
        ("[agent]\nidle_timeout = inf\n", "idle_timeout", "finite number of seconds"),
        ("[agent]\nmax_lifetime = -inf\n", "max_lifetime", "finite number of seconds"),
        ("[agent]\nidle_timeout = true\n", "idle_timeout", "number of seconds .* not bool"),
        ("[agent]\nidle_timeout = 1e300\n", "idle_timeout", "finite number of seconds"),
        ('[agent]\nidle_timeout = "60"\n', "idle_timeout", "number of seconds .* not str"),
        ('[agent]\nauto_unlock = "false"\n', "auto_unlock", "true or false .* not str"),
        ("[agent]\nauto_unlock = 0\n", "auto_unlock", "true or false .* not int"),
        ("[agent]\npin_policy = 1\n", "pin_policy", "one of tofu, off"),
        ("[agent]\npinentry = 5\n", "pinentry", "non-empty string"),
        ('[agent]\nkeyring_service = ""\n', "keyring_service", "non-empty string"),
        ("agent = 3\n", "agent", "table"),
    ],
)
def test_wrong_types_and_ranges_name_the_file_the_key_and_the_type(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value.message)
    assert str(path) in message
    assert re.search(rf"\b{key} .*{expected}", message), message


def test_exact_types_that_are_right_still_load(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[agent]\nidle_timeout = 0\nmax_lifetime = 90.5\nauto_unlock = false\n")
    config = load_config(path, environ={})
    assert (config.idle_timeout, config.max_lifetime, config.auto_unlock) == (0.0, 90.5, False)
    assert isinstance(config.idle_timeout, float)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9", "soon"])
def test_serve_refuses_a_bad_duration_on_the_command_line(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nomyo_agent", "serve", "--idle-timeout", value],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--idle-timeout" in result.stderr
    assert "seconds" in result.stderr


def test_replace_refuses_nan_too() -> None:
    with pytest.raises(ConfigError, match="finite"):
        Config().replace(idle_timeout=math.nan)
