"""Shared by tests/test_skypilot_*.py: SkyPilot pointed at an isolated HOME.

SkyPilot fixes its catalog directory from HOME when `sky` is first imported
(sky/catalog/common.py), so `import_sky()` imports it with HOME set to a
session-wide temporary directory holding copies of the real catalogs from
../shared/data/skypilot-catalog (no `.meta/` md5 files, so SkyPilot never
re-downloads them, see that folder's DATA-README.md). Tests then run with HOME
set to the same directory (fixture `sky_env`) so SkyPilot's state and config
(~/.sky, ~/.slurm) are the temporary ones too.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CATALOG_V8 = SHARED_DATA / "skypilot-catalog" / "v8"

_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "True", "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
_home: Path | None = None


def sky_home() -> Path:
    global _home
    if _home is None:
        if not (CATALOG_V8 / "common" / "accelerators.csv").is_file():
            pytest.skip(f"shared SkyPilot catalogs missing at {CATALOG_V8}")
        home = Path(tempfile.mkdtemp(prefix="fleet-skyhome-"))
        shutil.copytree(CATALOG_V8, home / ".sky" / "catalogs" / "v8")
        atexit.register(shutil.rmtree, home, True)
        _home = home
    return _home


@contextmanager
def home_env(home: Path):
    saved = {k: os.environ.get(k) for k in ["HOME", *_ENV]}
    os.environ["HOME"] = str(home)
    os.environ.update(_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def import_sky():
    """`sky`, imported with the isolated HOME (skip if someone imported it elsewhere first)."""
    home = sky_home()
    if "sky" not in sys.modules:
        with home_env(home):
            import sky  # noqa: F401
            import sky.catalog.common  # noqa: F401
    from sky.catalog import common

    catalog_dir = str(common._ABSOLUTE_VERSIONED_CATALOG_DIR)  # noqa: SLF001
    if not catalog_dir.startswith(str(home)):
        pytest.skip(f"sky was imported before the isolated HOME was set (catalog dir {catalog_dir})")
    return sys.modules["sky"]


@pytest.fixture
def sky_env(monkeypatch):
    """HOME -> the isolated SkyPilot home for the duration of a test; yields `sky`."""
    sky = import_sky()
    monkeypatch.setenv("HOME", str(sky_home()))
    for k, v in _ENV.items():
        monkeypatch.setenv(k, v)
    yield sky


class DownloadSpy:
    """Records (and refuses) every HTTP request made through `requests`, and every
    socket connection to a non-loopback address, while installed."""

    def __init__(self):
        self.calls: list[str] = []

    def __enter__(self):
        import socket

        import requests.sessions

        self._orig = requests.sessions.Session.request
        self._orig_connect = socket.socket.connect
        spy = self

        def request(session, method, url, *a, **kw):
            spy.calls.append(f"{method} {url}")
            raise AssertionError(f"network access attempted: {method} {url}")

        def connect(sock, address):
            host = address[0] if isinstance(address, tuple) else str(address)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not (
                str(host).startswith("127.") or host in ("::1", "localhost")
            ):
                spy.calls.append(f"connect {address}")
                raise AssertionError(f"network access attempted: connect {address}")
            return spy._orig_connect(sock, address)

        requests.sessions.Session.request = request
        socket.socket.connect = connect
        return self

    def __exit__(self, *exc):
        import socket

        import requests.sessions

        requests.sessions.Session.request = self._orig
        socket.socket.connect = self._orig_connect
        return False
