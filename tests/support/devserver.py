"""Fixtures for a real ``nomyo-devserver`` process, and helpers to talk to any router by hand.

- ``devserver``: a fresh router process for one test (plain HTTP, echo model, no API key).
- ``make_devserver(**options)``: the same with options (``api_key``, ``tls=True``, ``upstream``,
  ``upstream_model``, ``max_body``, ``args=[...]``); every router it made is stopped after the
  test. Each is a ``RunningDevServer`` with ``.url``, ``.public_key_pem``, ``.api_key``,
  ``.fingerprint``, ``.rotate_key()`` (SIGHUP, across processes), ``.stats()``, ``.stop()``.
- ``devserver_tls``: a self-signed certificate for 127.0.0.1 and localhost (cert, key, CA file).

Router keys are RSA-4096, generated once per test session and copied (mode 0600) into each
test's key file, so no test pays a 4096-bit key generation. Each process is started in its own
session, its stdout and stderr go to files (a full pipe can never block it), and it is stopped
with SIGTERM (then SIGKILL after 10 s) whatever the test did.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from nomyo_devserver import DevServer

__all__ = ["KeyPool", "RunningDevServer", "TLSFiles", "write_private_key"]

START_TIMEOUT = 30.0


def write_private_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600 from creation."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, path)


class KeyPool:
    """RSA-4096 router keys made on first use and kept for the whole session."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: list[Path] = []

    def file(self, index: int) -> Path:
        while len(self._files) <= index:
            path = self.folder / f"router-{len(self._files)}.pem"
            write_private_key(path, rsa.generate_private_key(public_exponent=65537, key_size=4096))
            self._files.append(path)
        return self._files[index]


@dataclass
class TLSFiles:
    cert: Path
    key: Path

    @property
    def ca(self) -> Path:
        """The self-signed certificate is its own CA: trust this file."""
        return self.cert

    def context(self) -> ssl.SSLContext:
        """A client context trusting only this certificate (httpx's ``verify=``)."""
        return ssl.create_default_context(cafile=str(self.cert))


@dataclass
class RunningDevServer:
    """A ``nomyo-devserver`` process started by ``make_devserver``."""

    url: str
    public_key_pem: str
    fingerprint: str
    api_key: str | None
    process: subprocess.Popen[bytes]
    key_file: Path
    stdout_path: Path
    stderr_path: Path
    verify: Any = True
    _pool: KeyPool | None = None
    _key_index: int = 0
    _seen_lines: int = field(default=2)

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(verify=self.verify, timeout=10, trust_env=False) as client:
            return client.get(self.url + path)

    def stats(self) -> dict[str, int]:
        """The router's counters (``GET /devserver/stats``)."""
        stats: dict[str, int] = self.get("/devserver/stats").json()
        return stats

    def rotate_key(self, timeout: float = 15.0) -> str:
        """Change the router key (another session key, via SIGHUP); returns the new PEM."""
        assert self._pool is not None
        self._key_index = 1 - self._key_index  # alternate between two session keys
        shutil.copyfile(self._pool.file(self._key_index), self.key_file)
        os.chmod(self.key_file, 0o600)
        old = self.public_key_pem
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pem = self.get("/pki/public_key").text
            if pem != old:
                self.public_key_pem = pem
                self.fingerprint = _wait_line(self, "NOMYO_ROUTER_FINGERPRINT=", deadline)
                return pem
            time.sleep(0.05)
        raise AssertionError(f"the router key did not change within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` s; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def _wait_line(server: RunningDevServer, prefix: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        lines = server.stdout_path.read_text().splitlines()
        for line in lines[server._seen_lines :]:
            server._seen_lines += 1
            if line.startswith(prefix):
                return line[len(prefix) :]
        time.sleep(0.02)
    raise AssertionError(f"no {prefix} line from the router:\n{server.log()}")


def start_devserver(
    folder: Path,
    pool: KeyPool,
    *,
    api_key: str | None = None,
    tls: TLSFiles | None = None,
    upstream: str | None = None,
    upstream_model: str | None = None,
    max_body: int | None = None,
    args: tuple[str, ...] | list[str] = (),
) -> RunningDevServer:
    """Start ``python -m nomyo_devserver`` and wait for its ``NOMYO_BASE_URL=`` line."""
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "router-key.pem"
    shutil.copyfile(pool.file(0), key_file)
    os.chmod(key_file, 0o600)
    argv = [sys.executable, "-m", "nomyo_devserver", "--port", "0", "--key-file", str(key_file)]
    if tls is not None:
        argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    if upstream is not None:
        argv += ["--upstream", upstream]
    if upstream_model is not None:
        argv += ["--upstream-model", upstream_model]
    if max_body is not None:
        argv += ["--max-body", str(max_body)]
    argv += list(args)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_DEVSERVER_")}
    if api_key is not None:
        env["NOMYO_DEVSERVER_API_KEY"] = api_key  # not on the command line, as users should
    stdout_path, stderr_path = folder / "stdout.txt", folder / "stderr.txt"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    server = RunningDevServer(
        url="",
        public_key_pem="",
        fingerprint="",
        api_key=api_key,
        process=process,
        key_file=key_file,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        verify=tls.context() if tls is not None else True,
        _pool=pool,
        _seen_lines=0,
    )
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            lines = stdout_path.read_text().splitlines()
            if len(lines) >= 2:
                break
            if process.poll() is not None:
                raise AssertionError(
                    f"nomyo-devserver exited ({process.returncode}):\n{server.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nomyo-devserver did not start in {START_TIMEOUT} s:\n{server.log()}"
                )
            time.sleep(0.02)
        assert lines[0].startswith("NOMYO_BASE_URL="), lines
        assert lines[1].startswith("NOMYO_ROUTER_FINGERPRINT="), lines
        server.url = lines[0].split("=", 1)[1]
        server.fingerprint = lines[1].split("=", 1)[1]
        server._seen_lines = 2
        server.public_key_pem = server.get("/pki/public_key").text
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def devserver_key_pool(tmp_path_factory: pytest.TempPathFactory) -> KeyPool:
    return KeyPool(tmp_path_factory.mktemp("devserver-keys"))


@pytest.fixture(scope="session")
def devserver_tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    folder = tmp_path_factory.mktemp("devserver-tls")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nomyo-devserver test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = TLSFiles(folder / "cert.pem", folder / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(files.key, key)
    return files


@pytest.fixture
def make_devserver(
    tmp_path: Path, devserver_key_pool: KeyPool, request: pytest.FixtureRequest
) -> Iterator[Callable[..., RunningDevServer]]:
    started: list[RunningDevServer] = []

    def make(*, tls: bool = False, **options: Any) -> RunningDevServer:
        files = request.getfixturevalue("devserver_tls") if tls else None
        folder = tmp_path / f"devserver-{len(started)}"
        server = start_devserver(folder, devserver_key_pool, tls=files, **options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def devserver(make_devserver: Callable[..., RunningDevServer]) -> RunningDevServer:
    return make_devserver()


@pytest.fixture
def router() -> Iterator[DevServer]:
    """An in-process devserver router with a 2048-bit key (modules that need another override
    it)."""
    with DevServer(key_bits=2048) as server:
        yield server
