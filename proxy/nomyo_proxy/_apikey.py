"""Where ``nomyo-proxy serve`` finds the router's API key: never from an app.

Rules of this module:

- The order is ``NOMYO_API_KEY``, then ``--api-key-file``, then, with ``--api-key-keyring``, the
  OS keyring; none of them is no key (a router that needs none).
- The key file must be 0600: one readable by others is refused, not read.
- The keyring is read by a short-lived child process (``python -I``), so that the proxy never
  loads the keyring's cryptography; it answers within 30 s or the start fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from nomyo_proxy._errors import ConfigError

__all__ = ["KEYRING_SERVICE", "api_key_from"]

KEYRING_SERVICE = "nomyo-proxy"


def api_key_from(args: argparse.Namespace, router: str) -> str | None:
    from_env = os.environ.get("NOMYO_API_KEY")
    if from_env:
        return from_env.strip()
    if args.api_key_file is not None:
        path: Path = args.api_key_file
        try:
            st = path.stat()
            if st.st_mode & 0o077:
                raise ConfigError(f"{path} is readable by others", hint=f"chmod 600 {path}")
            return path.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if args.api_key_keyring:
        return _keyring_key(router)
    return None


_KEYRING_READ = (
    "import sys, keyring\n"
    "value = keyring.get_password(sys.argv[1], sys.argv[2])\n"
    "sys.exit(3) if value is None else sys.stdout.write(value)\n"
)


def _keyring_key(router: str) -> str:
    # -I: isolated mode, nothing from the working directory or the environment is imported.
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _KEYRING_READ, KEYRING_SERVICE, router],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise ConfigError("the OS keyring did not answer in 30 s") from exc
    if done.returncode == 3:
        raise ConfigError(
            f"the OS keyring has no API key for {router}",
            hint=f"store it: keyring set {KEYRING_SERVICE} {router}",
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ConfigError(f"cannot read the OS keyring: {last}")
    return done.stdout.strip()
