"""The tray's pure logic (``nomyo_tray._view``): state -> icon, tooltip, menu, click, notices.
No display, no agent: these are the decisions ``_app`` merely renders."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nomyo_agent import protocol as p
from nomyo_tray import _view as v
from nomyo_tray._view import Action, IconKind

FP = "3f2a91c00d4e77b1" + "ab" * 24


def status(state: p.State, **kw: object) -> p.StatusReply:
    fields: dict[str, object] = {
        "state": state, "pid": 1, "protocol": 1, "agent_version": "0", "socket": "/s",
        "fingerprint": None if state is p.State.NO_IDENTITY else FP, "bits": 2048,
        "passphrase_protected": True, "keyring_backend": "x", "idle_timeout": 600.0,
        "max_lifetime": 0.0, "idle_left": None, "lifetime_left": None, "unlocked_at": None,
        "pin_policy": "tofu", "hardening": p.Hardening(False, False, False, False, False, False),
        "counters": p.Counters(),
    }  # fmt: skip
    fields.update(kw)
    return p.StatusReply(**fields)  # type: ignore[arg-type]


def rows(view: v.View, now: float = 0.0) -> dict[Action, v.MenuEntry]:
    return {r.action: r for r in v.menu(view, now) if r.action is not Action.NONE}


def info(view: v.View, now: float = 0.0) -> list[str]:
    return [r.text for r in v.menu(view, now) if r.action is Action.NONE]


def test_short_fingerprint_is_the_protocols() -> None:
    from nomyo_agent.protocol import short_fingerprint

    assert short_fingerprint(FP) == "3f2a:91c0:0d4e:77b1"


def test_view_module_does_not_import_cryptography() -> None:
    code = "import sys, nomyo_tray._view, nomyo_tray._icons; print('cryptography' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        (p.State.NO_IDENTITY, IconKind.NO_IDENTITY),
        (p.State.LOCKED, IconKind.LOCKED),
        (p.State.UNLOCKED, IconKind.UNLOCKED),
    ],
)
def test_icon_follows_state(state: p.State, kind: IconKind) -> None:
    assert v.icon_kind(v.view_from_status(status(state), 0)) is kind


def test_no_agent() -> None:
    view = v.no_agent()
    assert v.icon_kind(view) is IconKind.NO_AGENT
    assert v.tooltip(view) == "nomyo-agent: no agent running"
    menu = rows(view)
    assert set(menu) == {Action.START_AGENT, Action.QUIT}
    assert menu[Action.START_AGENT].enabled
    assert menu[Action.START_AGENT].default
    assert v.click_action(view, has_menu=False, has_default_action=True) is Action.START_AGENT


def test_locked() -> None:
    view = v.view_from_status(status(p.State.LOCKED), 0)
    assert v.tooltip(view) == "nomyo-agent: locked (3f2a:91c0:0d4e:77b1)"
    menu = rows(view)
    assert menu[Action.UNLOCK].enabled
    assert menu[Action.UNLOCK].default
    assert not menu[Action.LOCK].enabled
    assert Action.START_AGENT not in menu
    assert v.click_action(view, has_menu=True, has_default_action=True) is Action.UNLOCK


def test_unlocked_menu_shows_idle_time_and_apps() -> None:
    clients = [p.ClientInfo(pid=9, exe="python3", last_seen=2.0),
               p.ClientInfo(pid=8, exe="nomyo-chat", last_seen=1.0),
               p.ClientInfo(pid=7, exe="python3", last_seen=0.5)]  # fmt: skip
    st = status(p.State.UNLOCKED, idle_left=300.0, served_since_unlock=5, recent_clients=clients)
    view = v.view_from_status(st, now=100.0)
    assert v.tooltip(view) == "nomyo-agent: unlocked (3f2a:91c0:0d4e:77b1)"
    menu = rows(view, 100.0)
    assert menu[Action.LOCK].enabled
    assert menu[Action.LOCK].default
    assert not menu[Action.UNLOCK].enabled
    texts = info(view, 100.0)
    assert "Locks in 5 min if idle" in texts
    assert "Served 5 requests since unlock: python3, nomyo-chat" in texts
    # the countdown runs on the tray's clock between events, without asking the agent
    assert "Locks in 45 s if idle" in info(view, 355.0)
    assert v.click_action(view, has_menu=True, has_default_action=True) is Action.LOCK


def test_unlocked_without_idle_timeout() -> None:
    view = v.view_from_status(status(p.State.UNLOCKED, idle_timeout=0.0), 0)
    assert "No idle lock" in info(view)
    assert "Served 0 requests since unlock" in info(view)


def test_recent_apps_are_capped() -> None:
    clients = [p.ClientInfo(pid=i, exe=f"app{i}", last_seen=0) for i in range(6)]
    st = status(p.State.UNLOCKED, served_since_unlock=1, recent_clients=clients)
    assert "Served 1 request since unlock: app0, app1, app2, …" in info(v.view_from_status(st, 0))


def test_busy_disables_actions_and_the_click() -> None:
    view = v.view_from_status(status(p.State.LOCKED), 0)
    busy = v.View(**{**view.__dict__, "busy": Action.UNLOCK})
    menu = rows(busy)
    assert menu[Action.UNLOCK].text == "Unlocking…"
    assert not menu[Action.UNLOCK].enabled
    assert not menu[Action.UNLOCK].default
    assert v.click_action(busy, has_menu=True, has_default_action=True) is Action.NONE
    assert rows(busy)[Action.QUIT].enabled


def test_no_identity_offers_no_unlock() -> None:
    view = v.view_from_status(status(p.State.NO_IDENTITY), 0)
    assert v.tooltip(view) == "nomyo-agent: no identity yet"
    menu = rows(view)
    assert not menu[Action.UNLOCK].enabled
    assert not menu[Action.LOCK].enabled
    assert v.click_action(view, has_menu=False, has_default_action=True) is Action.NONE


def test_appindicator_click_opens_the_menu() -> None:
    view = v.view_from_status(status(p.State.LOCKED), 0)
    assert v.click_action(view, has_menu=True, has_default_action=False) is Action.NONE
    first = next(r for r in v.menu(view, 0) if r.enabled)
    assert first.action is Action.UNLOCK  # the menu's first usable row is the same action


def test_events_update_the_view_and_keep_the_timeout() -> None:
    view = v.view_from_status(status(p.State.LOCKED), 0)
    event = p.StateEvent(state=p.State.UNLOCKED, reason="unlock", fingerprint=FP, idle_left=600.0)
    after = v.apply_event(view, event, 10.0)
    assert v.icon_kind(after) is IconKind.UNLOCKED
    assert after.idle_timeout == 600.0
    assert after.seen_at == 10.0


@pytest.mark.parametrize(
    ("reason", "words"),
    [("idle_timeout", "idle"), ("max_lifetime", "maximum lifetime")],
)
def test_notice_on_automatic_lock(reason: str, words: str) -> None:
    notice = v.notice_for(p.StateEvent(state=p.State.LOCKED, reason=reason))
    assert notice is not None
    assert "locked" in notice.title
    assert words in notice.message


def test_notice_on_pin_mismatch_names_origin_and_command() -> None:
    event = p.StateEvent(state=p.State.UNLOCKED, reason="pin_mismatch", origin="https://r.example")
    notice = v.notice_for(event)
    assert notice is not None
    assert "https://r.example" in notice.message
    assert "nomyo-agent pins accept https://r.example" in notice.message


@pytest.mark.parametrize("reason", ["unlock", "lock", "watch", "served", "stopping"])
def test_no_notice_for_ordinary_changes(reason: str) -> None:
    assert v.notice_for(p.StateEvent(state=p.State.LOCKED, reason=reason)) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (0.2, "1 s"), (59, "59 s"), (60, "1 min"), (61, "2 min"), (3600, "1 h 00 min"),
     (5430, "1 h 31 min")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert v.format_duration(seconds) == text
