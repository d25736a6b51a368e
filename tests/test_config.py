"""config.toml, environment and flags: precedence, and typos that must not pass silently."""

from __future__ import annotations

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
        ("[agent]\nidle_timeout = -1\n", ">= 0"),
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
