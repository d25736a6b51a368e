"""``nomyo-devserver`` as a process: readiness line, signals, key file, API key, TLS, errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from nomyo_agent._keys import fingerprint, load_router_key
from support.devserver import RunningDevServer, write_private_key

MakeDevserver = Callable[..., RunningDevServer]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nomyo_devserver", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_ready_line_then_serves_then_sigterm_stops_cleanly(devserver: RunningDevServer) -> None:
    lines = devserver.stdout_path.read_text().splitlines()
    assert lines[0] == f"NOMYO_BASE_URL={devserver.url}"
    assert devserver.url.startswith("http://127.0.0.1:")
    key = load_router_key(devserver.public_key_pem)
    assert key.key_size == 4096
    assert fingerprint(key) == devserver.fingerprint
    with httpx.Client(timeout=10, trust_env=False) as http:  # kept alive across the stop
        assert http.get(devserver.url + "/pki/public_key").status_code == 200
        started = time.monotonic()
        assert devserver.stop() == 0
        assert time.monotonic() - started < 5
    assert "stopped" in devserver.log()
    assert "GET /pki/public_key" in devserver.log()  # requests are logged unless --quiet


def test_sigint_stops_cleanly(devserver: RunningDevServer) -> None:
    devserver.process.send_signal(signal.SIGINT)
    assert devserver.process.wait(10) == 0
    assert "Traceback" not in devserver.log()


def test_sighup_rotates_to_the_key_file_then_back(devserver: RunningDevServer) -> None:
    first_pem, first_fp = devserver.public_key_pem, devserver.fingerprint
    second_pem = devserver.rotate_key()
    assert second_pem != first_pem
    assert devserver.fingerprint == fingerprint(load_router_key(second_pem)) != first_fp
    assert devserver.rotate_key() == first_pem
    assert devserver.process.poll() is None


def test_sighup_without_a_key_file_change_makes_a_fresh_key(tmp_path: Path) -> None:
    out = (tmp_path / "out.txt").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nomyo_devserver", "--port", "0", "--key-bits", "2048", "-q"],
        stdout=out,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def lines() -> list[str]:
            return (tmp_path / "out.txt").read_text().splitlines()

        deadline = time.monotonic() + 30
        while len(lines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        url = lines()[0].split("=", 1)[1]
        proc.send_signal(signal.SIGHUP)
        while len(lines()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lines()[2].startswith("NOMYO_ROUTER_FINGERPRINT=")
        assert lines()[2] != lines()[1]
        pem = httpx.get(url + "/pki/public_key", trust_env=False).text
        assert fingerprint(load_router_key(pem)) == lines()[2].split("=", 1)[1]
        assert load_router_key(pem).key_size == 2048
    finally:
        proc.terminate()
        proc.wait(10)
        out.close()


def test_api_key_from_the_environment(make_devserver: MakeDevserver) -> None:
    server = make_devserver(api_key="k-123")
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert b"k-123" not in cmdline  # never on the command line
    with httpx.Client(timeout=10, trust_env=False) as http:
        response = http.post(
            server.url + "/v1/chat/secure_completion",
            content=b"{}",
            headers={"Content-Type": "application/octet-stream"},
        )
    assert response.status_code == 401


def test_https(make_devserver: MakeDevserver) -> None:
    server = make_devserver(tls=True)
    assert server.url.startswith("https://127.0.0.1:")
    assert server.get("/pki/public_key").text == server.public_key_pem


def test_key_file_open_to_others_is_refused_with_a_hint(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = tmp_path / "k.pem"
    write_private_key(path, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    os.chmod(path, 0o640)
    result = run_cli("--port", "0", "--key-file", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "error: key file" in result.stderr
    assert f"hint: run `chmod 600 {path}`" in result.stderr


def test_key_file_is_generated_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "new" / "router.pem"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nomyo_devserver",
            "--port",
            "0",
            "--key-file",
            str(path),
            "--key-bits",
            "2048",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("NOMYO_BASE_URL=http://")
        assert path.stat().st_mode & 0o777 == 0o600
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert fingerprint(key.public_key()) == proc.stdout.readline().strip().split("=", 1)[1]  # type: ignore[arg-type]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_busy_port_is_an_error_with_a_hint(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--port", str(port), "--key-bits", "2048")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "hint: pick another --port" in result.stderr


def test_tls_options_go_together() -> None:
    result = run_cli("--tls-cert", "/nonexistent.pem")
    assert result.returncode == 1
    assert "--tls-cert and --tls-key go together" in result.stderr


def test_help_hooks_lists_every_hook() -> None:
    result = run_cli("--help-hooks")
    assert result.returncode == 0
    for name in ("status-NNN", "flaky-NNN-K", "html-500", "garbage", "truncated", "bad-tag",
                 "other-recipient", "bad-version", "bad-algorithm", "drop", "slow-MS"):  # fmt: skip
        assert f"devserver/{name}" in result.stdout


@pytest.mark.parametrize("script", ["nomyo-devserver"])
def test_the_installed_script_runs(script: str) -> None:
    path = Path(sys.executable).with_name(script)
    result = subprocess.run(
        [str(path), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0
    assert "--upstream" in result.stdout
