"""The Secret Service fixture itself: a value round-trips through the real gnome-keyring."""

import subprocess
import sys

from support.desktop import Session

PY = sys.executable


def test_keyring_roundtrip_through_real_secret_service(desktop: Session) -> None:
    code = (
        "import keyring; b = keyring.get_keyring(); print(type(b).__module__);"
        "keyring.set_password('nomyo-test', 'u', 'v' * 3300);"
        "print(len(keyring.get_password('nomyo-test', 'u')))"
    )
    out = subprocess.run(
        [PY, "-c", code], env=desktop.env, capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    assert out == ["keyring.backends.SecretService", "3300"]
