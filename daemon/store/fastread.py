"""A read-only path to the store for `fleetctl status`: plain SQL over the DB-API driver.

Why not SQLAlchemy here: importing it costs 0.15-0.4 s, most of the 0.5 s that
`fleetctl status` may take. The tables are the ones daemon/store/schema.py
defines (created by the Alembic migrations); the queries are few and simple, and
tests/test_status.py checks that they agree with the ORM on SQLite and PostgreSQL.

- SQLite: the standard library's `sqlite3` (a file URL; WAL readers never block fleetd).
- PostgreSQL `postgresql+psycopg://` (or `postgresql://`): psycopg 3 directly.
- Anything else: a raw DB-API connection from a SQLAlchemy engine (slow start, same SQL).

SQL is written with `?` placeholders; they become `%s` for drivers of the format style.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from urllib.parse import parse_qsl, unquote, urlsplit

from daemon.redact import mask_url


class StoreUnavailable(Exception):
    """The database is missing, unreachable or has no fleet schema; the message says which (URL masked)."""


def sqlite_path(url: str) -> str | None:
    """The file of a `sqlite:///path` URL (None for an in-memory database or another backend)."""
    if not url.startswith("sqlite"):
        return None
    rest = url.split("://", 1)[1] if "://" in url else ""
    if not rest.startswith("/"):
        return None
    path = rest[1:].split("?", 1)[0]
    return unquote(path) if path and path != ":memory:" else None


class Reader:
    """A DB-API connection with the few helpers the read models need."""

    def __init__(self, conn, paramstyle: str, dialect: str):
        self.conn = conn
        self.format = paramstyle in ("format", "pyformat")
        self.dialect = dialect

    def rows(self, sql: str, *params) -> list[tuple]:
        if self.format:
            sql = sql.replace("%", "%%").replace("?", "%s")
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return list(cur.fetchall())
        finally:
            cur.close()

    def one(self, sql: str, *params):
        r = self.rows(sql, *params)
        return r[0] if r else None

    def has_table(self, name: str) -> bool:
        if self.dialect == "sqlite":
            return self.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name) is not None
        if self.dialect == "postgresql":  # information_schema is slow on PostgreSQL; to_regclass is a lookup
            return self.one("SELECT to_regclass(?) IS NOT NULL", name)[0]
        return self.one("SELECT 1 FROM information_schema.tables WHERE table_name = ?", name) is not None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ts(value) -> datetime | None:
    """A stored UTC datetime (SQLite: ISO text; PostgreSQL: naive timestamp) as an aware datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def bind_ts(r: Reader, value: datetime):
    """An aware datetime as the store keeps it (naive UTC; text on SQLite)."""
    naive = value.astimezone(timezone.utc).replace(tzinfo=None)
    return naive.isoformat(sep=" ", timespec="microseconds") if r.dialect == "sqlite" else naive


def js(value):
    """A JSON column: text on SQLite, already decoded by psycopg."""
    if value is None or not isinstance(value, (str, bytes)):
        return value
    return json.loads(value)


def open_reader(url: str) -> Reader:
    """A read connection to the store at `url`; StoreUnavailable with a masked URL when there is none."""
    shown = mask_url(url)
    backend = url.split(":", 1)[0].split("+", 1)[0]
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise StoreUnavailable(f"{shown}: an in-memory database holds no fleet")
        if not os.path.exists(path):
            raise StoreUnavailable(f"no database at {path} (run `fleetctl simulate` or start fleetd first, or pass --db)")
        import sqlite3

        conn = sqlite3.connect(path, timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        r = Reader(conn, "qmark", "sqlite")
    elif backend == "postgresql" and url.split("://", 1)[0] in ("postgresql", "postgresql+psycopg"):
        import psycopg

        u = urlsplit(url)
        kw = {k: v for k, v in parse_qsl(u.query)}
        if u.hostname:
            kw["host"] = u.hostname
        if u.port:
            kw["port"] = u.port
        if u.username:
            kw["user"] = unquote(u.username)
        if u.password:
            kw["password"] = unquote(u.password)
        if u.path.strip("/"):
            kw["dbname"] = unquote(u.path.strip("/"))
        kw.setdefault("connect_timeout", 10)
        try:
            conn = psycopg.connect(**kw, autocommit=True)
        except psycopg.Error as e:
            raise StoreUnavailable(f"{shown}: cannot connect: {_scrub(str(e), url)}") from None
        r = Reader(conn, "format", "postgresql")
    else:
        from sqlalchemy import create_engine

        engine = create_engine(url)
        try:
            raw = engine.raw_connection()
        except Exception as e:
            raise StoreUnavailable(f"{shown}: cannot connect: {_scrub(str(e), url)}") from None
        r = Reader(raw.driver_connection, engine.dialect.paramstyle, engine.dialect.name)
    try:
        ok = r.has_table("alembic_version") and r.one("SELECT version_num FROM alembic_version") is not None
    except Exception as e:
        r.close()
        raise StoreUnavailable(f"{shown}: cannot read: {_scrub(str(e), url)}") from None
    if not ok:
        r.close()
        raise StoreUnavailable(f"{shown}: no fleet schema in this database (run `fleetctl db upgrade --db URL`)")
    return r


def _scrub(text: str, url: str) -> str:
    from daemon.redact import redact, url_secrets

    return redact(text.strip().splitlines()[0] if text.strip() else text, url_secrets(url))
