"""Files only the daemon's user may read: the store, its WAL and lock files, the simulated cloud's state.

They hold the fleet's history and, in a SQLite store, whatever the tick recorded;
an operator's umask (often 022) must not make them world-readable. SQLite gives
its -wal, -shm and -journal files the mode of the database file, so creating
the database itself 0600 covers them.
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.files import write_atomic

PRIVATE_MODE = 0o600


def create_private(path: str | Path) -> bool:
    """Create `path` empty with mode 0600 if it does not exist; True if it was created here.

    An existing file keeps its mode: an operator who widened it on purpose
    (a read-only group for `fleetctl`) is not overruled.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    os.chmod(path, PRIVATE_MODE)  # the mode given to open() is filtered by the umask; make it exact
    return True


def open_private(path: str | Path, flags: int = os.O_CREAT | os.O_RDWR) -> int:
    """os.open with mode 0600 for a file created now (lock files)."""
    created = not os.path.exists(path)
    fd = os.open(path, flags, PRIVATE_MODE)
    if created:
        os.fchmod(fd, PRIVATE_MODE)
    return fd


def write_private_atomic(path: str | Path, data: str, durable: bool = False) -> None:
    """Replace `path` with `data` atomically (a process crash leaves the old content or the new), mode 0600.

    `durable` also fsyncs the data before the rename, for a power loss.
    """
    write_atomic(path, data, mode=PRIVATE_MODE, durable=durable)
