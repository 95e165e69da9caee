"""Writing a file that another process reads while we write it (HAProxy, a gateway, fleetctl).

One rule for all of them: write a temp file in the same directory, then rename it over the
target, so a reader sees the old content or the new, never half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, text: str, mode: int | None = None, durable: bool = False) -> Path:
    """Replace `path` with `text` atomically; `mode` sets the file's permissions exactly (not
    filtered by the umask); `durable` fsyncs before the rename (for a power loss)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=str(target.parent))
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target
