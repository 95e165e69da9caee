"""Exactly one acting daemon: a leader lease with a fencing token, kept in the store.

Several `fleetd` may run against one PostgreSQL store; only the holder of the
lease acts (records intents, calls the provider), the others stand by and take
over when the lease expires. The lease is a row in `leases`:

    name | holder | token | acquired_at | renewed_at | expires_at

- `try_acquire` takes the lease if it is free, expired or already ours. Every
  change of holder adds 1 to `token` (the fencing token), so tokens only grow.
- `renew` extends our lease; it fails once the lease expired or changed hands.
- `assert_leader(session, lease, now)` is the fence: called inside a write
  transaction it refuses (raises `LeaseLost`) when another holder took over or
  the lease expired, so the whole transaction is rolled back. A daemon that lost
  its lease therefore cannot record an intent, and since the tick calls the
  provider only for intents it recorded, and checks the lease right before each
  call, it cannot call the provider either.

Concurrency. On PostgreSQL the row is locked: acquire/renew/release take
`SELECT ... FOR UPDATE`, the fence takes `FOR SHARE`, so an acquirer waits for a
leader's write transaction in flight to commit, and two acquirers are serialized
(the second sees the first one's row and loses). The UPDATE is also conditional
on the token read (compare-and-set), which keeps SQLite correct: its writers are
serialized by the database lock, and every lease transaction starts with a write.
On SQLite a second daemon on the same file is refused at start instead
(`DaemonFileLock`), since a file database has one host anyway.

Time. `now` is the daemon's clock (injected: tests and replays move it by hand).
Daemons on different hosts must keep their clocks in step (NTP); choose the TTL
well above the possible skew. The guard `min_remaining_s` keeps a provider call
inside the lease: a leader whose lease has less than that left does not start one.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from daemon.store.schema import DaemonRow, Lease as LeaseRow

DEFAULT_LEASE = "fleetd"


class LeaseLost(Exception):
    """This daemon does not hold the lease (any more): it must not act."""


class AnotherDaemonRunning(Exception):
    """A second fleetd on the same SQLite file (the message names the holder's pid)."""


@dataclass(frozen=True)
class Lease:
    """The lease as this holder won or renewed it."""

    name: str
    holder: str
    token: int
    acquired_at: datetime
    expires_at: datetime

    def remaining_s(self, now: datetime) -> float:
        return (self.expires_at - now).total_seconds()


def new_holder_id() -> str:
    """host:pid:random, so a restarted daemon that gets the same pid is still someone else."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _ensure_row(s: Session, name: str) -> None:
    """Insert the lease row if missing (a write first: it also takes SQLite's write lock)."""
    dialect = s.get_bind().dialect.name
    values = {"name": name, "holder": None, "token": 0}
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # other databases: best effort without an upsert
        if s.get(LeaseRow, name) is None:
            s.add(LeaseRow(**values))
            s.flush()
        return
    s.execute(insert(LeaseRow).values(**values).on_conflict_do_nothing(index_elements=["name"]))


def _locked(s: Session, name: str, read: bool = False) -> LeaseRow | None:
    q = select(LeaseRow).where(LeaseRow.name == name).with_for_update(read=read)
    return s.execute(q.execution_options(populate_existing=True)).scalar_one_or_none()


def _cas(s: Session, name: str, old_token: int, old_holder: str | None, **values) -> bool:
    """UPDATE ... WHERE token = old AND holder = old: False when someone changed the row first."""
    cond = [LeaseRow.name == name, LeaseRow.token == old_token]
    cond.append(LeaseRow.holder.is_(None) if old_holder is None else LeaseRow.holder == old_holder)
    res = s.execute(update(LeaseRow).where(*cond).values(**values).execution_options(synchronize_session=False))
    return res.rowcount == 1


def try_acquire(s: Session, holder: str, ttl_s: float, now: datetime, name: str = DEFAULT_LEASE,
                steal: bool = False) -> Lease | None:
    """Take (or keep) the lease inside transaction `s`; None when another holder has it and it is live.

    `steal`: take it even from a live holder. Only for a daemon that holds an OS lock
    proving no other daemon runs on this store (SQLite's DaemonFileLock): a live lease
    of someone else is then a crashed predecessor's, and waiting out its TTL would
    only delay the restart.
    """
    if ttl_s <= 0:
        raise ValueError("lease ttl must be positive")
    _ensure_row(s, name)
    row = _locked(s, name)
    expires = now + timedelta(seconds=ttl_s)
    live = row.holder is not None and row.expires_at is not None and row.expires_at > now
    if live and row.holder != holder and not steal:
        return None
    if live and row.holder == holder:  # ours already: extend, same token
        if not _cas(s, name, row.token, row.holder, renewed_at=now, expires_at=expires):
            return None
        return Lease(name, holder, row.token, row.acquired_at, expires)
    token = row.token + 1
    if not _cas(s, name, row.token, row.holder, holder=holder, token=token, acquired_at=now, renewed_at=now,
                expires_at=expires):
        return None
    return Lease(name, holder, token, now, expires)


def renew(s: Session, lease: Lease, ttl_s: float, now: datetime) -> Lease | None:
    """Extend our lease; None when it expired or changed hands (then the caller is a standby)."""
    row = _locked(s, lease.name)
    if (row is None or row.holder != lease.holder or row.token != lease.token
            or row.expires_at is None or row.expires_at <= now):
        return None
    expires = now + timedelta(seconds=ttl_s)
    if not _cas(s, lease.name, row.token, row.holder, renewed_at=now, expires_at=expires):
        return None
    return replace(lease, expires_at=expires)


def release(s: Session, lease: Lease, now: datetime) -> bool:
    """Give the lease up (clean shutdown) so a standby takes over at once; False if it was not ours."""
    row = _locked(s, lease.name)
    if row is None or row.holder != lease.holder or row.token != lease.token:
        return False
    return _cas(s, lease.name, row.token, row.holder, holder=None, renewed_at=now, expires_at=now)


def assert_leader(s: Session, lease: Lease | None, now: datetime, min_remaining_s: float = 0.0) -> None:
    """The fence: raise LeaseLost unless `lease` is still the live lease, with `min_remaining_s` left.

    Call it inside the write transaction it protects (before or after the writes:
    a raise rolls the whole transaction back). On PostgreSQL the row is share-locked
    until that transaction ends, so no takeover can commit in between.
    """
    if lease is None:
        raise LeaseLost("this daemon holds no lease (standby)")
    row = _locked(s, lease.name, read=True)
    if row is None:
        raise LeaseLost(f"lease {lease.name!r} does not exist")
    if row.holder != lease.holder or row.token != lease.token:
        raise LeaseLost(f"lease {lease.name!r} is held by {row.holder or 'nobody'} (token {row.token}); "
                        f"ours was token {lease.token}")
    left = (row.expires_at - now).total_seconds() if row.expires_at else float("-inf")
    if left <= min_remaining_s:
        raise LeaseLost(f"lease {lease.name!r} (token {lease.token}) "
                        + ("expired" if left <= 0 else f"has only {left:.1f}s left (< {min_remaining_s:.1f}s)"))


def current_lease(s: Session, name: str = DEFAULT_LEASE) -> LeaseRow | None:
    """The lease row as it stands (for `fleetctl status`); no lock."""
    return s.get(LeaseRow, name)


# -- a daemon's view: leader or standby ---------------------------------------------------------


class Role(StrEnum):
    LEADER = "leader"
    STANDBY = "standby"


@dataclass
class Leadership:
    """One daemon's lease, refreshed by the loop; the narrow interface fleetd wires in.

    - `refresh()` at the start of every tick (and on a standby's poll): renews or
      acquires; returns the role. A database error counts as a lost lease.
    - `fence(session)` inside every write transaction that records an intent.
    - `check()` right before every provider call that changes the fleet (own short
      transaction); it renews when half the TTL is gone, so a long apply phase keeps
      the lease while the tick path is alive, and lets it lapse when the tick hangs.
    - `release()` on a clean shutdown.
    """

    store: object  # daemon.store.repo.Store
    ttl_s: float
    clock: Callable[[], datetime]
    holder: str = ""
    name: str = DEFAULT_LEASE
    min_remaining_s: float = 0.0
    # True when an OS lock proves this is the only daemon on the store (SQLite): a live lease
    # held by someone else is a crashed predecessor's and is taken at once (see try_acquire).
    exclusive: bool = False
    lease: Lease | None = None
    last_error: str | None = None

    def __post_init__(self) -> None:
        if not self.holder:
            self.holder = new_holder_id()
        # The tick and fleetd's renewal job both refresh: one at a time.
        self._lock = threading.RLock()
        if self.min_remaining_s >= self.ttl_s:
            raise ValueError("min_remaining_s must be below the lease ttl")

    @property
    def role(self) -> Role:
        return Role.LEADER if self.lease is not None and self.lease.remaining_s(self.clock()) > 0 else Role.STANDBY

    def refresh(self) -> Role:
        with self._lock:
            now = self.clock()
            try:
                with self.store.session() as s:
                    got = renew(s, self.lease, self.ttl_s, now) if self.lease is not None else None
                    if got is None:
                        got = try_acquire(s, self.holder, self.ttl_s, now, self.name, steal=self.exclusive)
                self.lease, self.last_error = got, None
            except Exception as e:  # the database is gone: we cannot prove leadership, so we are not leader
                self.lease, self.last_error = None, f"{type(e).__name__}: {e}"
            self._report(now)
            return self.role

    def fence(self, s: Session) -> None:
        assert_leader(s, self.lease, self.clock(), self.min_remaining_s)

    def check(self) -> None:
        with self._lock:
            self._check()

    def _check(self) -> None:
        now = self.clock()
        if self.lease is None:
            raise LeaseLost("this daemon holds no lease (standby)")
        try:
            with self.store.session() as s:
                if self.lease.remaining_s(now) < self.ttl_s / 2:
                    got = renew(s, self.lease, self.ttl_s, now)
                    if got is None:
                        self.lease = None
                        raise LeaseLost("lease lost at renewal")
                    self.lease = got
                assert_leader(s, self.lease, now, self.min_remaining_s)
        except LeaseLost:
            raise
        except Exception as e:
            raise LeaseLost(f"lease not verifiable: {type(e).__name__}: {e}") from e

    def release(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self.lease is None:
            return
        now = self.clock()
        try:
            with self.store.session() as s:
                release(s, self.lease, now)
                _report_row(s, self.holder, "stopped", now, None)
        except Exception:
            pass  # the lease expires by itself
        self.lease = None

    def _report(self, now: datetime) -> None:
        """Record this daemon's role for `fleetctl status` (best effort)."""
        try:
            with self.store.session() as s:
                _report_row(s, self.holder, str(self.role), now,
                            f"token {self.lease.token}" if self.lease else self.last_error)
        except Exception:
            pass


def _report_row(s: Session, holder: str, role: str, now: datetime, detail: str | None) -> None:
    row = s.get(DaemonRow, holder)
    if row is None:
        parts = holder.split(":")
        host = parts[0]
        pid = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else os.getpid()
        s.add(DaemonRow(holder=holder, hostname=host, pid=pid, role=role, started_at=now, last_seen=now,
                        detail=detail))
    else:
        row.role, row.last_seen, row.detail = role, now, detail


def daemons(s: Session, now: datetime, stale_s: float) -> list[dict]:
    """The daemons seen within `stale_s` seconds, leader first (for `fleetctl status`)."""
    since = now - timedelta(seconds=stale_s)
    rows = s.scalars(select(DaemonRow).where(DaemonRow.last_seen >= since, DaemonRow.role != "stopped")
                     .order_by(DaemonRow.role, DaemonRow.last_seen.desc()))
    return [{"holder": r.holder, "hostname": r.hostname, "pid": r.pid, "role": r.role,
             "last_seen": r.last_seen.isoformat(), "detail": r.detail} for r in rows]


# -- SQLite: one daemon per file --------------------------------------------------------------


class DaemonFileLock:
    """An exclusive lock on `<database>.fleetd.lock`, held for the life of the process.

    flock(2) is released by the kernel when the process dies (SIGKILL included), so a
    crashed daemon never blocks its restart; the file keeps the holder's pid for the
    message a second daemon prints.
    """

    def __init__(self, db_path: str | Path):
        self.path = Path(f"{db_path}.fleetd.lock")
        self._fd: int | None = None

    def acquire(self) -> "DaemonFileLock":
        from daemon.private import open_private

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_private(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                who = os.pread(fd, 512, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise AnotherDaemonRunning(
                f"another fleetd already runs on this database ({who or 'pid unknown'}; lock {self.path}); "
                "a SQLite store takes one daemon: stop it first, or use PostgreSQL for a standby") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def single_daemon_lock(url: str) -> DaemonFileLock | None:
    """For a SQLite file store: the held lock (raises AnotherDaemonRunning); None for other databases."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return DaemonFileLock(u.database).acquire()
