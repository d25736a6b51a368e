"""Router pins: trust on first use, refusal of a changed key, accept and forget."""

from __future__ import annotations

from pathlib import Path

import pytest

from nomyo_agent._pins import PinStore
from nomyo_agent.errors import (
    CorruptIdentityError,
    NotPinnedError,
    PinMismatchError,
)


def test_first_use_pins_then_a_changed_key_is_refused_until_accepted(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    pins = PinStore(path)
    assert pins.check("https://r", "aa", 1.0) == "new"
    assert pins.check("https://r", "aa", 2.0) == "known"
    with pytest.raises(PinMismatchError) as caught:
        pins.check("https://r", "bb", 3.0)
    assert caught.value.origin == "https://r"
    assert caught.value.fingerprint == "bb"
    assert "pins accept https://r" in caught.value.hint
    # the refusal survives a restart, with the offered key remembered as pending
    reloaded = PinStore(path)
    assert reloaded.list()[0].pending_fingerprint == "bb"
    with pytest.raises(PinMismatchError):
        reloaded.check("https://r", "bb", 4.0)
    assert reloaded.accept("https://r", None, 5.0) == "bb"
    assert reloaded.check("https://r", "bb", 6.0) == "known"
    assert path.stat().st_mode & 0o777 == 0o600


def test_accept_without_a_pending_key_and_forget_of_unknown_origin_fail(tmp_path: Path) -> None:
    pins = PinStore(tmp_path / "pins.json")
    with pytest.raises(NotPinnedError):
        pins.accept("https://r", None, 1.0)
    with pytest.raises(NotPinnedError):
        pins.forget("https://r")
    pins.check("https://r", "aa", 1.0)
    pins.forget("https://r")
    assert pins.check("https://r", "cc", 2.0) == "new"


def test_a_corrupt_pins_file_is_an_error_not_an_empty_trust_list(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_text("{not json")
    with pytest.raises(CorruptIdentityError, match="corrupt"):
        PinStore(path)
