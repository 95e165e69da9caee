"""The leader lease with fencing (daemon/store/lease.py), on SQLite and a real PostgreSQL server.

The concurrency tests use real processes on PostgreSQL (several daemons on one
store is a PostgreSQL deployment); on SQLite a second daemon on the file is refused.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from daemon.store.lease import (AnotherDaemonRunning, Leadership, LeaseLost, Role, assert_leader, current_lease,
                                daemons, release, renew, single_daemon_lock, try_acquire)
from daemon.store.migrate import upgrade
from daemon.store.repo import Store
from daemon.store.schema import Alert
from tests.conftest import REPO, T0, FakeClock


def _acquire(store, holder, ttl, now, name="fleetd"):
    with store.session() as s:
        return try_acquire(s, holder, ttl, now, name)


def _write_alert_fenced(store, lease, now, msg):
    """A write transaction that records something only while `lease` is the leader's."""
    with store.session() as s:
        Store.alert(s, now, "info", "test", msg)
        assert_leader(s, lease, now)


def _alerts(store, msg=None):
    with store.session() as s:
        q = select(func.count()).select_from(Alert)
        if msg:
            q = q.where(Alert.message == msg)
        return s.scalar(q)


def test_one_holder_at_a_time_tokens_grow_and_expiry_hands_over(store):
    a = _acquire(store, "a", 30, T0)
    assert a is not None and a.token == 1
    assert _acquire(store, "b", 30, T0 + timedelta(seconds=10)) is None  # live: b stands by
    again = _acquire(store, "a", 30, T0 + timedelta(seconds=10))  # a again: kept, same token
    assert again.token == 1 and again.expires_at == T0 + timedelta(seconds=40)
    with store.session() as s:
        a2 = renew(s, again, 30, T0 + timedelta(seconds=20))
    assert a2.expires_at == T0 + timedelta(seconds=50)
    # a stops renewing; once expired, b takes over with the next token
    assert _acquire(store, "b", 30, T0 + timedelta(seconds=49)) is None
    b = _acquire(store, "b", 30, T0 + timedelta(seconds=51))
    assert b is not None and b.token == 2 and b.holder == "b"
    with store.session() as s:
        assert renew(s, a2, 30, T0 + timedelta(seconds=52)) is None  # a's renewal fails: it lost
        row = current_lease(s)
        assert (row.holder, row.token) == ("b", 2)


def test_a_fenced_out_holders_write_is_refused_and_rolled_back(store):
    a = _acquire(store, "a", 30, T0)
    _write_alert_fenced(store, a, T0 + timedelta(seconds=5), "a while leader")
    b = _acquire(store, "b", 30, T0 + timedelta(seconds=31))
    with pytest.raises(LeaseLost, match="held by b"):
        _write_alert_fenced(store, a, T0 + timedelta(seconds=32), "a after takeover")
    _write_alert_fenced(store, b, T0 + timedelta(seconds=32), "b as leader")
    assert _alerts(store, "a while leader") == 1
    assert _alerts(store, "a after takeover") == 0
    assert _alerts(store, "b as leader") == 1


def test_an_expired_lease_fences_even_before_anyone_takes_over(store):
    a = _acquire(store, "a", 30, T0)
    with pytest.raises(LeaseLost, match="expired"):
        _write_alert_fenced(store, a, T0 + timedelta(seconds=30), "late")
    with store.session() as s:  # a margin keeps a provider call inside the lease
        with pytest.raises(LeaseLost, match="only"):
            assert_leader(s, a, T0 + timedelta(seconds=25), min_remaining_s=10)
    assert _alerts(store, "late") == 0


def test_release_hands_over_at_once(store):
    a = _acquire(store, "a", 300, T0)
    with store.session() as s:
        assert release(s, a, T0 + timedelta(seconds=1))
    b = _acquire(store, "b", 300, T0 + timedelta(seconds=2))
    assert b is not None and b.token == 2
    with store.session() as s:
        assert not release(s, a, T0 + timedelta(seconds=3))  # not a's any more


def test_leadership_roles_check_renews_and_reports(store):
    clock = FakeClock(T0)
    one = Leadership(store, ttl_s=20, clock=clock, holder="host1:1:x")
    two = Leadership(store, ttl_s=20, clock=clock, holder="host2:2:y")
    assert one.refresh() is Role.LEADER
    assert two.refresh() is Role.STANDBY
    with pytest.raises(LeaseLost, match="standby"):
        two.check()
    clock.advance(15)  # past half the TTL: check() renews
    one.check()
    assert one.lease.expires_at == clock.now + timedelta(seconds=20)
    with store.session() as s:
        seen = daemons(s, clock.now, stale_s=60)
    assert [(d["holder"], d["role"]) for d in seen] == [("host1:1:x", "leader"), ("host2:2:y", "standby")]
    # one stops (hangs, dies): no renewals; two takes over after the TTL
    clock.advance(21)
    assert two.refresh() is Role.LEADER and two.lease.token == 2
    with pytest.raises(LeaseLost):
        one.check()
    assert one.refresh() is Role.STANDBY
    two.release()
    assert one.refresh() is Role.LEADER and one.lease.token == 3


def test_losing_the_database_means_standby(store, tmp_path):
    clock = FakeClock(T0)
    one = Leadership(store, ttl_s=20, clock=clock, holder="h:1:x")
    assert one.refresh() is Role.LEADER

    class Broken:
        def session(self):
            raise ConnectionError("database unreachable")

    one.store = Broken()
    assert one.refresh() is Role.STANDBY and "unreachable" in one.last_error
    with pytest.raises(LeaseLost):
        one.check()


# -- real processes on PostgreSQL ----------------------------------------------------------------


def _race(url, holder, barrier, results, rounds):
    st = Store.open(url)
    for rnd in range(rounds):
        barrier.wait(60)  # everyone asks at the same moment, for the same virtual time
        with st.session() as s:
            got = try_acquire(s, holder, 30, T0 + timedelta(minutes=rnd), f"race{rnd}")
        results.put((rnd, holder, got.token if got else None))


def test_concurrent_acquirers_never_both_win(pg_url):
    store = Store.open(pg_url)
    upgrade(store.engine)
    ctx = mp.get_context("spawn")
    n, rounds = 6, 10
    for rnd in range(rounds):  # the row exists and its lease has expired: a takeover race
        assert _acquire(store, "old", 30, T0 - timedelta(hours=1), f"race{rnd}").token == 1
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(pg_url, f"p{i}", barrier, results, rounds)) for i in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in range(n * rounds)]
    for p in procs:
        p.join(30)
    for rnd in range(rounds):
        tokens = [tok for r, _, tok in got if r == rnd and tok is not None]
        assert tokens == [2], [g for g in got if g[0] == rnd]


def _leader_until_killed(url, ttl, ready):
    st = Store.open(url)
    lead = Leadership(st, ttl_s=ttl, clock=lambda: datetime.now(timezone.utc), holder="leader:1:a")
    assert lead.refresh() is Role.LEADER
    ready.set()
    while True:  # renews as a tick would, until SIGKILL
        lead.refresh()
        time.sleep(ttl / 4)


def _standby(url, ttl, poll, out):
    st = Store.open(url)
    me = Leadership(st, ttl_s=ttl, clock=lambda: datetime.now(timezone.utc), holder="standby:2:b")
    t0 = time.monotonic()
    while me.refresh() is not Role.LEADER:
        time.sleep(poll)
        if time.monotonic() - t0 > 60:
            out.put(None)
            return
    out.put((time.time(), me.lease.token))


def test_a_standby_takes_over_after_the_leader_is_killed(pg_url):
    store = Store.open(pg_url)
    upgrade(store.engine)
    ctx = mp.get_context("spawn")
    ttl, poll = 2.0, 0.1
    ready, out = ctx.Event(), ctx.Queue()
    leader = ctx.Process(target=_leader_until_killed, args=(pg_url, ttl, ready))
    leader.start()
    assert ready.wait(60)
    standby = ctx.Process(target=_standby, args=(pg_url, ttl, poll, out))
    standby.start()
    time.sleep(2 * ttl)  # the standby stays standby while the leader renews
    with store.session() as s:
        assert current_lease(s).holder == "leader:1:a"
    killed_at = time.time()
    os.kill(leader.pid, signal.SIGKILL)
    leader.join(10)
    res = out.get(timeout=60)
    standby.join(10)
    assert res is not None
    took_over_at, token = res
    assert token == 2
    # within the TTL plus one poll of the standby (and some slack for a loaded machine)
    assert took_over_at - killed_at <= ttl + poll + 2.0


def _fenced_writer(url, lease_args, holding, proceed, out):
    from daemon.store.lease import Lease

    st = Store.open(url)
    lease = Lease(*lease_args)
    now = lease.acquired_at + timedelta(seconds=1)
    with st.session() as s:
        assert_leader(s, lease, now)  # share-locks the lease row until this transaction ends
        holding.set()
        proceed.wait(30)
        time.sleep(0.5)  # the takeover is now waiting on our lock
        Store.alert(s, now, "info", "test", "write in flight")
    out.put(("first", time.time()))
    try:
        with st.session() as s:
            Store.alert(s, now, "info", "test", "write after takeover")
            assert_leader(s, lease, now)
        out.put(("second", "written"))
    except LeaseLost as e:
        out.put(("second", f"refused: {e}"))


def test_a_takeover_waits_for_the_write_in_flight_and_then_fences_it_out(pg_url):
    store = Store.open(pg_url)
    upgrade(store.engine)
    a = _acquire(store, "a", 30, T0)
    ctx = mp.get_context("spawn")
    holding, proceed, out = ctx.Event(), ctx.Event(), ctx.Queue()
    w = ctx.Process(target=_fenced_writer,
                    args=(pg_url, (a.name, a.holder, a.token, a.acquired_at, a.expires_at), holding, proceed, out))
    w.start()
    assert holding.wait(60)
    proceed.set()
    b = _acquire(store, "b", 30, T0 + timedelta(seconds=60))  # a's lease expired: b takes it, after a's commit
    acquired = time.time()
    first = out.get(timeout=60)
    second = out.get(timeout=60)
    w.join(30)
    assert b is not None and b.token == 2
    assert first[0] == "first" and first[1] <= acquired + 0.05  # a's transaction committed before b won
    assert second[0] == "second" and second[1].startswith("refused") and "held by b" in second[1]
    assert _alerts(store, "write in flight") == 1
    assert _alerts(store, "write after takeover") == 0


# -- SQLite: one daemon per file ---------------------------------------------------------------


def test_a_second_daemon_on_a_sqlite_file_refuses_to_start(sqlite_url, tmp_path):
    code = ("import sys, time\n"
            "from daemon.store.lease import single_daemon_lock\n"
            f"lock = single_daemon_lock({sqlite_url!r})\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AnotherDaemonRunning, match=rf"pid {holder.pid}\b"):
            single_daemon_lock(sqlite_url)
        lock_file = tmp_path / "fleet.db.fleetd.lock"
        assert oct(lock_file.stat().st_mode & 0o777) == "0o600"
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops the lock with the process (SIGKILL included): a restart is not blocked
    lock = single_daemon_lock(sqlite_url)
    assert lock is not None
    with pytest.raises(AnotherDaemonRunning):
        single_daemon_lock(sqlite_url)  # also within one process
    lock.release()
    assert single_daemon_lock(f"postgresql+psycopg://u:p@127.0.0.1:1/x") is None
