"""Private files written whole: the one home of "temporary file, fsync, rename, mode 0600".

Standard library only, so that clients (nomyo-proxy's token store) can use it without loading
``cryptography``. A reader sees the old file or the new one, never half of either, and the file
is 0600 from its creation (never chmod-ed after the bytes are on disk).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; its folder is created 0700 if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # 0600 by mkstemp
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
