"""How nomyo-proxy is started: a Unix socket, the router's API key from the environment, a 0600
file or the OS keyring (real gnome-keyring), never from an app; a remote listener only with
``--allow-remote`` and TLS."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support.agent import RunningAgent
from support.devserver import RunningDevServer, TLSFiles
from support.proxy import RunningProxy, proxy_cli, proxy_env

BODY = {"model": "devserver/echo", "messages": [{"role": "user", "content": "hi"}]}
ROUTER_KEY = "router-secret-1234"


@pytest.fixture
def keyed_router(make_devserver: Callable[..., RunningDevServer]) -> RunningDevServer:
    return make_devserver(api_key=ROUTER_KEY)


def chat(url: str, token: str, **kw: object) -> httpx.Response:
    return httpx.post(
        f"{url}/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"},
        timeout=30, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_unix_socket_listener_is_private(
    ready_agent: RunningAgent, devserver: RunningDevServer, tmp_path: Path,
    make_proxy: Callable[..., RunningProxy],
) -> None:  # fmt: skip
    path = tmp_path / "proxy" / "proxy.sock"
    proxy = make_proxy(ready_agent, devserver, "--unix", str(path))
    assert proxy.url == f"unix:{path}"
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
    token = proxy.token("t")
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as http:
        answer = http.post(
            "http://localhost/v1/chat/completions", json=BODY,
            headers={"Authorization": f"Bearer {token}"}, timeout=30,
        )  # fmt: skip
    assert answer.status_code == 200
    # A second proxy does not steal a live socket; a stale one (nothing answers) is replaced.
    env = proxy_env(ready_agent)
    args = ("serve", "--unix", str(path), "--router", devserver.url, "--allow-http")
    second = proxy_cli(env, *args, check=False)
    assert second.returncode == 1
    assert "already answers" in second.stderr
    proxy.stop()
    assert path.is_socket()  # left behind by a killed proxy
    assert make_proxy(ready_agent, devserver, "--unix", str(path)).url == f"unix:{path}"


def test_unix_socket_folder_open_to_others_is_refused(
    ready_agent: RunningAgent, devserver: RunningDevServer, tmp_path: Path
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    done = proxy_cli(
        proxy_env(ready_agent), "serve", "--unix", str(folder / "proxy.sock"),
        "--router", devserver.url, "--allow-http", check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "mode 0755" in done.stderr
    assert not (folder / "proxy.sock").exists()


def test_api_key_from_the_environment_and_never_from_the_app(
    ready_agent: RunningAgent, keyed_router: RunningDevServer,
    make_proxy: Callable[..., RunningProxy],
) -> None:  # fmt: skip
    without = make_proxy(ready_agent, keyed_router)
    token = without.token("t")
    refused = chat(without.url, token)
    assert refused.status_code == 502  # the router refused the proxy, not the app's token
    assert refused.json()["error"]["code"] == "router_authentication_failed"
    # An app that brings the router key itself gets nowhere: it is never forwarded.
    smuggled = httpx.post(
        f"{without.url}/chat/completions", json={**BODY, "api_key": ROUTER_KEY},
        headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )  # fmt: skip
    assert smuggled.status_code == 400
    with_env = make_proxy(ready_agent, keyed_router, env={"NOMYO_API_KEY": ROUTER_KEY})
    assert chat(with_env.url, token).status_code == 200


def test_api_key_file_must_be_private(
    ready_agent: RunningAgent, keyed_router: RunningDevServer, tmp_path: Path,
    make_proxy: Callable[..., RunningProxy],
) -> None:  # fmt: skip
    key_file = tmp_path / "router.key"
    key_file.write_text(ROUTER_KEY + "\n")
    key_file.chmod(0o644)
    env = proxy_env(ready_agent)
    done = proxy_cli(
        env, "serve", "--listen", "127.0.0.1:0", "--router", keyed_router.url, "--allow-http",
        "--api-key-file", str(key_file), check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "readable by others" in done.stderr
    assert f"chmod 600 {key_file}" in done.stderr
    key_file.chmod(0o600)
    proxy = make_proxy(ready_agent, keyed_router, "--api-key-file", str(key_file))
    assert chat(proxy.url, proxy.token("t")).status_code == 200


def test_api_key_from_the_os_keyring(
    ready_agent: RunningAgent, keyed_router: RunningDevServer,
    make_proxy: Callable[..., RunningProxy],
) -> None:  # fmt: skip
    env = proxy_env(ready_agent)
    missing = proxy_cli(
        env, "serve", "--listen", "127.0.0.1:0", "--router", keyed_router.url, "--allow-http",
        "--api-key-keyring", check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert f"keyring set nomyo-proxy {keyed_router.url}" in missing.stderr
    subprocess.run(
        [sys.executable, "-c", "import keyring, sys; keyring.set_password(*sys.argv[1:])",
         "nomyo-proxy", keyed_router.url, ROUTER_KEY],
        env=env, check=True, timeout=60,
    )  # fmt: skip
    proxy = make_proxy(ready_agent, keyed_router, "--api-key-keyring")
    assert chat(proxy.url, proxy.token("t")).status_code == 200


def test_remote_listener_only_with_tls(
    ready_agent: RunningAgent, devserver: RunningDevServer, devserver_tls: TLSFiles,
    make_proxy: Callable[..., RunningProxy],
) -> None:  # fmt: skip
    proxy = make_proxy(
        ready_agent, devserver, "--listen", "0.0.0.0:0", "--allow-remote",
        "--tls-cert", str(devserver_tls.cert), "--tls-key", str(devserver_tls.key),
    )  # fmt: skip
    assert proxy.url.startswith("https://0.0.0.0:")
    url = proxy.url.replace("0.0.0.0", "127.0.0.1")
    token = proxy.token("t")
    answer = chat(url, token, verify=ssl.create_default_context(cafile=str(devserver_tls.cert)))
    assert answer.status_code == 200
    # Plain HTTP gets no HTTP answer: the TLS listener closes on the non-TLS bytes, cleanly or
    # with a reset, depending on which side the kernel sees first.
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.post(f"{url.replace('https', 'http')}/chat/completions", json=BODY, timeout=10)


def test_a_plain_http_router_needs_allow_http(ready_agent: RunningAgent) -> None:
    done = proxy_cli(
        proxy_env(ready_agent), "serve", "--listen", "127.0.0.1:0", "--router",
        "http://127.0.0.1:9", check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("nomyo-proxy: ")
    assert "Traceback" not in done.stderr


def test_a_token_file_others_can_read_is_refused_with_a_hint(
    ready_agent: RunningAgent, devserver: RunningDevServer,
    make_proxy: Callable[..., RunningProxy],
) -> None:  # fmt: skip
    proxy = make_proxy(ready_agent, devserver)
    token = proxy.token("t")
    assert chat(proxy.url, token).status_code == 200  # the running proxy has read the file
    path = Path(proxy.env["XDG_STATE_HOME"]) / "nomyo-agent" / "proxy-tokens.json"
    path.chmod(0o644)
    refused = chat(proxy.url, token)
    assert refused.status_code == 500
    assert refused.json()["error"]["code"] == "token_file"
    assert f"chmod 600 {path}" in refused.json()["error"]["message"]
    listed = proxy.cli("token", "list", check=False)
    assert listed.returncode == 1
    assert "readable or writable by others" in listed.stderr
    path.chmod(0o600)
    assert chat(proxy.url, token).status_code == 200


def test_models_come_from_the_router_when_it_lists_them(
    ready_agent: RunningAgent, make_proxy: Callable[..., RunningProxy]
) -> None:
    seen: list[str | None] = []

    class Router(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = b'{"object": "list", "data": [{"id": "Qwen/Qwen3-0.6B", "object": "model"}]}'
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Router)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        router = f"http://127.0.0.1:{server.server_address[1]}"
        proxy = make_proxy(
            ready_agent, router, "--model", "not-listed", env={"NOMYO_API_KEY": ROUTER_KEY}
        )
        listed = httpx.get(
            f"{proxy.url}/models", headers={"Authorization": f"Bearer {proxy.token('t')}"}
        )
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["data"]] == ["Qwen/Qwen3-0.6B"]
    assert seen == [f"Bearer {ROUTER_KEY}"]  # the proxy's router key, not the app's token
