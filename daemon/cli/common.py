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
    """--db, else the config's store.url, else FLEET_DB, else the default file; a URL that cannot
    work (garbage, `mysql://`, a driver not installed) fails here in one line."""
    if db:
        url = db
    elif config is not None:
        url = load_config_or_fail(config).store.url
    else:
        url = os.environ.get("FLEET_DB", "sqlite:///fleet.db")
    check_url_or_fail(url)
    return url


def check_url_or_fail(url: str) -> None:
    from daemon.preflight import store_url_problem

    problem = store_url_problem(url)
    if problem:
        fail(problem)


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

        from daemon.redact import redact, url_secrets

        if isinstance(e, OSError) and not isinstance(e, ConnectionError):
            # SQLite's file (created 0600 before it opens) in a directory that is missing or not ours.
            fail(f"{mask_url(url)}: {e.strerror or e}: {e.filename or ''}".rstrip(": "))
        if not isinstance(e, (SQLAlchemyError, ImportError, ConnectionError)) and not _is_driver_error(e):
            raise
        from daemon.preflight import first_line

        fail(f"{mask_url(url)}: {redact(first_line(e), url_secrets(url))}")


def _is_driver_error(e: BaseException) -> bool:
    """A DB-API error raised by the driver itself (sqlite3.Error, psycopg.Error): PEP 249 names them."""
    return any(c.__name__ in ("DatabaseError", "InterfaceError", "Error") and c.__module__.split(".")[0] in
               ("sqlite3", "psycopg", "psycopg2") for c in type(e).__mro__)


def open_existing(url: str):
    """Open a database for reading; refuse clearly when it is missing or not migrated."""
    from sqlalchemy.engine import make_url

    from daemon.store.migrate import current_revision
    from daemon.store.repo import Store

    check_url_or_fail(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" and not Path(u.database).exists():
        fail(f"no database at {u.database} (run `fleetctl simulate` or start fleetd first, or pass --db)")
    with db_errors(url):
        store = Store.open(url)
        revision = current_revision(store.engine)
    if revision is None:
        fail(f"{mask_url(url)}: no fleet schema in this database (run `fleetctl db upgrade --db URL`)")
    return store
