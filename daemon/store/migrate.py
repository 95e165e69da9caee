"""Schema migrations through Alembic, under a lock so two processes never race."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from daemon.private import open_private


class SchemaError(Exception):
    """The database schema is not at the version this program needs."""


def _alembic_config(url: str):
    from alembic.config import Config as AlembicConfig

    import migrations

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except Exception:
            return None
    return row[0] if row else None


@contextmanager
def _migration_lock(engine: Engine):
    """SQLite: an advisory file lock beside the database; PostgreSQL: an advisory lock."""
    url = make_url(str(engine.url))
    if url.get_backend_name() == "sqlite":
        db = url.database
        if not db or db == ":memory:":
            yield
            return
        lock_path = f"{db}.migrate.lock"
        Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
        fd = open_private(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    elif url.get_backend_name() == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(727272)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727272)"))
                conn.commit()
    else:
        yield


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to `revision`; returns (before, after)."""
    from alembic import command

    with _migration_lock(engine):
        before = current_revision(engine)
        cfg = _alembic_config(str(engine.url.render_as_string(hide_password=False)))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return before, current_revision(engine) or ""


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Take the schema back to `revision` ("base": nothing left); returns (before, after).

    For an operator rolling back a release: each migration's downgrade() undoes it.
    """
    from alembic import command

    with _migration_lock(engine):
        before = current_revision(engine)
        cfg = _alembic_config(str(engine.url.render_as_string(hide_password=False)))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
        return before, current_revision(engine)


def ensure_current(engine: Engine, auto_upgrade: bool) -> None:
    """Used at daemon start: migrate (under the lock) or refuse with a clear message."""
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    if auto_upgrade:
        upgrade(engine)
        return
    raise SchemaError(
        f"database schema is at {current or 'nothing (empty database)'}, this version needs {head}; "
        "run `fleetctl db upgrade` or set store.auto_upgrade = true"
    )
