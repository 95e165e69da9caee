"""What every fleetctl command shares: failing with one clear line, loading config, opening the store."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Optional

import typer


def fail(msg: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def load_config_or_fail(path: Optional[Path]):
    from daemon.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        fail(str(e))


def db_url(db: Optional[str], config: Optional[Path]) -> str:
    """--db, else the config's store.url, else FLEET_DB, else the default file."""
    if db:
        return db
    if config is not None:
        return load_config_or_fail(config).store.url
    return os.environ.get("FLEET_DB", "sqlite:///fleet.db")


def mask_url(url: str) -> str:
    from daemon.redact import mask_url as mask

    return mask(url)


@contextmanager
def db_errors(url: str):
    """A database that cannot be reached or read: one clear line naming it, password masked."""
    try:
        yield
    except Exception as e:
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(e, SQLAlchemyError):
            raise
        from daemon.redact import redact, url_secrets

        first = str(getattr(e, "orig", None) or e).strip().splitlines()
        fail(f"{mask_url(url)}: {type(getattr(e, 'orig', None) or e).__name__}: "
             f"{redact(first[0] if first else '', url_secrets(url))}")


def open_existing(url: str):
    """Open a database for reading; refuse clearly when it is missing or not migrated."""
    from sqlalchemy.engine import make_url

    from daemon.store.migrate import current_revision
    from daemon.store.repo import Store

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" and not Path(u.database).exists():
        fail(f"no database at {u.database} (run `fleetctl simulate` or start fleetd first, or pass --db)")
    store = Store.open(url)
    with db_errors(url):
        revision = current_revision(store.engine)
    if revision is None:
        fail(f"{mask_url(url)}: no fleet schema in this database (run `fleetctl db upgrade --db URL`)")
    return store
