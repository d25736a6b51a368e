"""Per-app approval (issue 12, item 3): with ``confirm = "first-use"`` the agent asks through a
real pinentry (pinentry-tty ``CONFIRM`` in tmux, on the app's own terminal) before an app first
uses the identity after an unlock; the answer holds until lock; a denied request gets
``app_denied`` (``AgentDeniedError`` in the client) and nothing is sealed.

Apps are the client-library script of ``support.apps``; two script names are two apps.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nomyo_agent import protocol as p
from nomyo_agent._config import ConfigError, load_config
from nomyo_agent._peer import app_of
from support.agent import RunningAgent
from support.desktop import Session
from support.terminal import Terminal
from support.waiting import wait_until
from support.x11 import XDisplay


def confirming_agent(
    make_agent: Callable[..., RunningAgent], desktop: Session, policy: str = "first-use",
    extra: str = "", pinentry: str = "/usr/bin/pinentry-tty",
) -> RunningAgent:  # fmt: skip
    config = desktop.home / ".config" / "nomyo-agent" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[agent]\nconfirm = "{policy}"\n{extra}')
    agent = make_agent(args=["--pinentry", pinentry])
    agent.keygen(bits=2048)  # no passphrase: unlocked at once
    return agent


def apps(agent: RunningAgent) -> list[dict[str, object]]:
    return list(json.loads(agent.cli("apps", "--json").stdout)["apps"])


def answer(term: Terminal, key: str) -> None:
    """pinentry-tty's CONFIRM takes the first letter of a button: [a]llow or [d]eny."""
    term.wait_for("[ad]?")
    term.type(key)


@pytest.mark.slow
def test_first_use_asks_once_and_the_answer_holds_until_lock(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = confirming_agent(make_agent, desktop)
    term = terminal(sealing_app(agent))
    term.wait_for("to use your NOMYO identity until the next lock?")
    screen = term.screen()
    assert "Allow " in screen
    assert "app.py (" in screen
    answer(term, "a")
    term.wait_for("EXIT=0")
    assert "SEALED" in term.screen()

    again = terminal(sealing_app(agent), name="again")
    again.wait_for("EXIT=0")
    assert "SEALED" in again.screen()
    assert "NOMYO identity" not in again.screen()  # no second prompt

    [seen] = apps(agent)
    assert seen["decision"] == "allowed"
    assert seen["uses"] == 2
    assert str(seen["app"]).endswith(f"app.py ({os.path.realpath(sys.executable)})")
    listing = agent.cli("apps").stdout
    assert "allowed" in listing
    assert "app.py" in listing

    agent.cli("lock")
    assert apps(agent) == []  # a lock forgets every decision


@pytest.mark.slow
def test_deny_seals_nothing_holds_until_forgotten(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = confirming_agent(make_agent, desktop)
    term = terminal(sealing_app(agent))
    answer(term, "d")
    term.wait_for("EXIT=0")
    assert "FAILED AgentDeniedError" in term.screen()
    assert "was not allowed to use the identity: denied by the user" in term.screen()
    assert agent.status().counters.seals == 0

    again = terminal(sealing_app(agent), name="again")
    again.wait_for("EXIT=0")
    assert "FAILED AgentDeniedError" in again.screen()  # at once, remembered
    assert "NOMYO identity" not in again.screen()
    [seen] = apps(agent)
    assert seen["decision"] == "denied"

    agent.cli("apps", "forget", str(seen["app"]))
    third = terminal(sealing_app(agent), name="third")
    answer(third, "a")
    third.wait_for("EXIT=0")
    assert "SEALED" in third.screen()
    assert agent.status().counters.seals == 1

    out = agent.cli("apps", "forget", "/no/such/app", check=False)
    assert out.returncode == 1
    assert "no app '/no/such/app' was seen since unlock" in out.stderr


@pytest.mark.slow
def test_an_unanswered_prompt_denies_and_asks_again_next_time(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = confirming_agent(make_agent, desktop, extra="prompt_timeout = 2\n")
    term = terminal(sealing_app(agent))
    term.wait_for("[ad]?")
    term.wait_for("EXIT=0", timeout=15)
    assert "FAILED AgentDeniedError" in term.screen()
    assert "no answer" in term.screen()
    assert agent.status().counters.seals == 0
    [seen] = apps(agent)
    assert seen["decision"] == "not-asked"


@pytest.mark.slow
def test_two_apps_at_once_get_one_prompt_each_in_turn_and_one_app_twice_gets_one(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = confirming_agent(make_agent, desktop)
    first = terminal(sealing_app(agent, "first.py"), name="first")
    first.wait_for("[ad]?")
    # The same app once more, with no terminal: it waits on first.py's open prompt.
    twin = subprocess.Popen(
        shlex.split(sealing_app(agent, "first.py")), env=desktop.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    second = terminal(sealing_app(agent, "second.py"), name="second")
    try:
        wait_until(
            "both other apps waiting",
            lambda: sum(a["decision"] == "pending" for a in apps(agent)) == 2,
        )
        assert "[ad]?" not in second.screen()  # one prompt at a time
        answer(first, "a")
        first.wait_for("EXIT=0")
        answer(second, "d")  # its prompt comes once the first is answered
        second.wait_for("EXIT=0")
        out, _ = twin.communicate(timeout=20)
    finally:
        if twin.poll() is None:
            twin.kill()
            twin.communicate()
    assert "SEALED" in first.screen()
    assert out.strip() == "SEALED"
    assert "FAILED AgentDeniedError" in second.screen()
    assert first.screen().count("[ad]?") == 1
    decisions = {Path(str(a["app"]).split(" ")[0]).name: a["decision"] for a in apps(agent)}
    assert decisions == {"first.py": "allowed", "second.py": "denied"}
    assert agent.status().counters.seals == 2


@pytest.mark.slow
def test_every_use_asks_each_time(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    terminal: Callable[..., Terminal],
    sealing_app: Callable[..., str],
) -> None:
    agent = confirming_agent(make_agent, desktop, policy="every-use")
    for name in ("one", "two"):
        term = terminal(sealing_app(agent), name=name)
        term.wait_for("to use your NOMYO identity this once?")
        answer(term, "a")
        term.wait_for("EXIT=0")
        assert "SEALED" in term.screen()


@pytest.mark.slow
def test_off_by_default_serves_without_asking_and_lists_apps(
    make_agent: Callable[..., RunningAgent], sealing_app: Callable[..., str]
) -> None:
    agent = make_agent()
    agent.keygen(bits=2048)
    out = subprocess.run(
        shlex.split(sealing_app(agent)), env=agent.env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "SEALED"
    [seen] = apps(agent)
    assert (seen["decision"], seen["uses"]) == ("not-asked", 1)


def test_app_of_names_the_executable_and_the_script(tmp_path: Path) -> None:
    script = tmp_path / "tool.py"
    script.write_text("import sys; sys.stdin.read()")
    for argv, expected in (
        ([sys.executable, "-u", "tool.py"], f"{script} ({os.path.realpath(sys.executable)})"),
        ([sys.executable, "-m", "json.tool"], f"-m json.tool ({os.path.realpath(sys.executable)})"),
        (["/bin/cat"], os.path.realpath("/bin/cat")),
    ):
        proc = subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.PIPE)
        # Popen returns as exec begins; the new argv is readable a moment later.
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        first = argv[0].encode()
        wait_until("the child's argv", lambda c=cmdline, f=first: c.read_bytes().startswith(f))
        try:
            assert app_of(proc.pid) == expected
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)
    assert app_of(0) == "pid 0"


def test_confirm_setting_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path, environ={}).confirm == "off"
    path.write_text('[agent]\nconfirm = "always"\n')
    with pytest.raises(ConfigError, match="confirm must be one of off, first-use, every-use"):
        load_config(path, environ={})


def test_the_denied_error_crosses_the_wire_and_maps_to_the_client_exception() -> None:
    import nomyo_client as nc
    from nomyo_agent import errors as ae
    from nomyo_client._from_agent import from_agent_error

    reply = ae.AppDeniedError("x was not allowed").to_reply()
    assert reply.code is p.ErrorCode.APP_DENIED
    back = ae.from_reply(p.decode_response(p.encode(reply)))  # type: ignore[arg-type]
    assert isinstance(back, ae.AppDeniedError)
    client = from_agent_error(back)
    assert isinstance(client, nc.AgentDeniedError)
    assert "apps forget" in client.hint


@pytest.mark.slow
def test_an_app_on_a_display_is_asked_through_pinentry_gtk2(
    make_agent: Callable[..., RunningAgent],
    desktop: Session,
    xdisplay: XDisplay,
    sealing_app: Callable[..., str],
) -> None:
    """A graphical app (a display, no terminal) gets the CONFIRM as a pinentry-gtk-2 window on
    its display: Alt+A presses Allow (its mnemonic), Escape denies."""
    agent = confirming_agent(make_agent, desktop, pinentry="/usr/bin/pinentry-gtk-2")
    for key, expected in (("alt+a", "SEALED"), ("Escape", "FAILED AgentDeniedError")):
        app = subprocess.Popen(
            shlex.split(sealing_app(agent)), env={**desktop.env, **xdisplay.env},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            wait_until(
                "a pinentry-gtk-2 window", lambda: bool(xdisplay.windows_named("^nomyo-agent$")), 20
            )
            xdisplay.xdotool("key", key)
            out, _ = app.communicate(timeout=20)
        finally:
            if app.poll() is None:
                app.kill()
                app.communicate()
        assert out.startswith(expected), out
        wait_until("the window to close", lambda: not xdisplay.windows_named("^nomyo-agent$"))
        agent.cli("apps", "forget", str(apps(agent)[0]["app"]))  # ask again next time


@pytest.mark.slow
def test_each_proxy_token_is_an_app_of_its_own(
    make_agent: Callable[..., RunningAgent], desktop: Session
) -> None:
    """nomyo-proxy names the token each request serves (Seal.app): under ``confirm`` every
    token is asked about on its own, appended to the proxy's own app name."""
    from nomyo_agent.errors import AppDeniedError
    from support.apps import router_pem

    agent = confirming_agent(make_agent, desktop)
    with agent.connect(timeout=20) as conn:
        conn.call(p.Hello(client="a proxy"), p.HelloReply)  # names no terminal: cannot be asked
        for token in ("alpha", "beta"):
            seal = p.Seal(
                origin="https://router.example",
                router_key_pem=router_pem(),
                plaintext=b"{}",
                app=token,
            )
            with pytest.raises(AppDeniedError, match=f": {token} was not allowed"):
                conn.call(seal, p.SealReply)
    names = sorted(str(a["app"]) for a in apps(agent))
    assert [n.rsplit(": ", 1)[1] for n in names] == ["alpha", "beta"]
    assert names[0].rsplit(": ", 1)[0] == names[1].rsplit(": ", 1)[0]  # the same process
    assert agent.status().counters.seals == 0
