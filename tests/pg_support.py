"""A throwaway PostgreSQL server for the tests (a pytest plugin; tests/conftest.py loads it).

As root, the first test that asks for PostgreSQL makes a cluster with Debian's
binaries (`/usr/lib/postgresql/<version>/bin/initdb`, `pg_ctl`; installed by
scripts/deps-postgresql.sh) in a temporary directory owned by the `postgres`
user, listening on 127.0.0.1 and a free port only, and stops it when the test
session ends. Each test gets a database of its own. Elsewhere (not root, no
binaries) the PostgreSQL variants skip and say why.

The server asks for a password over TCP (scram-sha-256), so every URL the tests
use carries one: the secret-masking tests rely on that.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "fleet"
PG_PASSWORD = "s3cret-Pa55word"  # appears in every PostgreSQL URL of the tests; must never be printed


def pg_bindir() -> Path | None:
    """The newest Debian PostgreSQL binaries (FLEET_PG_BINDIR overrides)."""
    env = os.environ.get("FLEET_PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "PostgreSQL tests start their own server as root (initdb runs as the postgres user); not root"
    if pg_bindir() is None:
        return "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (run scripts/deps-postgresql.sh)"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` system user (install Debian's postgresql: scripts/deps-postgresql.sh)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed (pyproject dependency psycopg[binary])"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", user: str = PG_USER, password: str = PG_PASSWORD) -> str:
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), user="postgres", group="postgres", cwd=self.root, capture_output=True,
                              text=True, timeout=timeout, check=False, env={"PATH": "/usr/bin:/bin", "LANG": "C"})

    def start(self) -> None:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        r = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C")
        pwfile.unlink()
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stdout}\n{r.stderr}")
        # Throwaway data: no fsync. Loopback only, a socket directory of its own.
        for attempt in range(5):
            self.port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            r = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                          "-o", opts, "-w", "-t", "60", "start")
            if r.returncode == 0:
                return
            time.sleep(0.2)
        log = (self.root / "server.log").read_text(errors="replace") if (self.root / "server.log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {r.stdout}\n{r.stderr}\n{log[-2000:]}")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server():
    why = skip_reason()
    if why:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
    server = PostgresServer(pg_bindir(), root)
    try:
        server.start()
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's server; dropped afterwards."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        try:
            pg_server.drop_database(name)
        except Exception:
            pass
