"""Several fleetd on one PostgreSQL store, as processes: exactly one acts, a standby takes over.

What the issue found before the lease: two daemons on one store both planned and
launched (26 and 30 launches in 60 s, transitions recorded twice). Here three
daemons share one real PostgreSQL server (tests/pg_support.py), one simulated
cloud (its state file is shared between processes like a real cloud; its journal
records which process created or ended each machine) and one request log that
the test writes. Each daemon reaches the database through a TCP proxy of its
own, so the test can cut one daemon off the database (a partition: the proxy
holds every byte) without touching the others.

Checked, with 3-second ticks:
- only the leader decides and only it calls the cloud; the standbys say so in
  `fleetctl status` and in their logs;
- after the leader's SIGKILL, and after the next leader loses the database,
  another daemon decides within two ticks (the failover times are printed);
- the daemon cut off never calls the cloud or records anything once the other
  has taken over, and comes back as a standby;
- the decisions' fencing tokens never go down; every request written is in the
  store exactly once, across both failovers; no machine is created twice;
- the database password (in FLEET_DB only) appears in no log line and no output.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime

import pytest

from tests.conftest import REPO
from tests.live_support import Fleetd, RequestWriter, fleet_config, service_block, wait_until
from tests.pg_support import PG_PASSWORD

pytestmark = pytest.mark.slow

TICK_S = 3.0
LEADER = "[leader]\nttl_s = 4\nrenew_every_s = 1.5\nfence_margin_s = 1\n"


class Proxy:
    """127.0.0.1:port -> the PostgreSQL server; `partition()` holds every byte both ways, `heal()` lets them go."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                self.open.wait()
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def partition(self):
        self.open.clear()

    def heal(self):
        self.open.set()

    def close(self):
        self.closed = True
        self.open.set()
        self.lsock.close()


def _pg(pg_server, dbname):
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=pg_server.port, user="fleet", password=PG_PASSWORD, dbname=dbname,
                           autocommit=True)


def _decisions(pg_server, dbname) -> list[tuple[int, datetime, str, dict | None]]:
    try:
        with _pg(pg_server, dbname) as c:
            return c.execute("SELECT id, at, outcome, inputs FROM decisions ORDER BY id").fetchall()
    except Exception:
        return []  # no schema yet


def _holder(inputs) -> str | None:
    lease = (inputs or {}).get("lease") or {}
    return lease.get("holder")


def _status(url: str) -> tuple[dict, str]:
    j = subprocess.run([sys.executable, "-m", "daemon.cli.fleetctl", "status", "--db", url, "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    t = subprocess.run([sys.executable, "-m", "daemon.cli.fleetctl", "status", "--db", url], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert j.returncode == 0 and t.returncode == 0, j.stderr + t.stderr
    return json.loads(j.stdout), j.stdout + j.stderr + t.stdout + t.stderr


def _journal(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _first_decision_by_other(pg_server, dbname, not_holders: set[str], after: float, timeout: float):
    """Wait for an applied decision by a holder not in `not_holders`, made after wall time `after`."""
    found = []

    def seen():
        for i, at, outcome, inputs in _decisions(pg_server, dbname):
            h = _holder(inputs)
            if h and h not in not_holders and at.timestamp() >= after and outcome == "applied":
                found.append((i, at.timestamp(), h))
                return True
        return False

    wait_until(seen, timeout, step=0.1)
    return found[0] if found else None


def test_three_daemons_one_acts_and_a_standby_takes_over(pg_server, tmp_path, capsys):
    dbname = pg_server.create_database()
    log = tmp_path / "chat.jsonl"
    journal = tmp_path / "journal.jsonl"
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"journal": str(journal)}))
    writer = RequestWriter(log, "jsonl", lambda t: 5.0, seed=4)
    demand = f'kind = "request-log"\npath = "{log}"\nlateness_s = 2'
    proxies, daemons = [], []
    try:
        for k in range(3):
            proxies.append(Proxy(pg_server.port))
            cfg = fleet_config(tmp_path, service_block("chat", demand), tick_s=TICK_S, window_s=TICK_S,
                               extra=LEADER, name=f"fleet{k}.toml")
            url = pg_server.url(dbname).replace(f":{pg_server.port}/", f":{proxies[k].port}/")
            daemons.append(Fleetd(cfg, tmp_path, tag=f"d{k}",
                                  env={"FLEET_DB": url, "FLEET_SIM_FAULTS": str(faults)}))
        a, b, c = daemons
        a.start()
        writer.start()
        assert wait_until(lambda: a.events("leading"), 120), a.log_text()[-3000:]
        b.start()
        c.start()
        assert wait_until(lambda: len(b.events("standby")) >= 3 and len(c.events("standby")) >= 3, 120), \
            b.log_text()[-2000:] + c.log_text()[-2000:]
        time.sleep(3 * TICK_S)
        holder = {d.tag: d.events("started")[0]["holder"] for d in daemons}

        # Exactly one acts: every decision is the leader's, every machine created by its process.
        rows = _decisions(pg_server, dbname)
        assert rows and {_holder(r[3]) for r in rows} == {holder["d0"]}
        created = [e for e in _journal(journal) if e["event"] == "created"]
        assert created and {e["pid"] for e in created} == {a.pid}
        assert b.events("tick") == [] and c.events("tick") == []
        # ... and the standbys say so in fleetctl status.
        st, text = _status(pg_server.url(dbname))
        assert st["leader"]["holder"] == holder["d0"] and st["leader"]["live"]
        roles = {x["holder"]: x["role"] for x in st["daemons"]}
        assert roles == {holder["d0"]: "leader", holder["d1"]: "standby", holder["d2"]: "standby"}
        assert "standby" in text and PG_PASSWORD not in text

        # The leader is SIGKILLed: a standby decides within two ticks.
        t_kill = time.time()
        a.kill()
        first = _first_decision_by_other(pg_server, dbname, {holder["d0"]}, t_kill, 8 * TICK_S)
        assert first is not None, b.log_text()[-2000:] + c.log_text()[-2000:]
        kill_failover = first[1] - t_kill
        x = b if first[2] == holder["d1"] else c
        y = c if x is b else b
        time.sleep(2 * TICK_S)

        # The new leader loses the database (its proxy holds every byte): the last one takes over.
        t_cut = time.time()
        proxies[daemons.index(x)].partition()
        second = _first_decision_by_other(pg_server, dbname, {holder["d0"], holder[x.tag]}, t_cut, 8 * TICK_S)
        assert second is not None, y.log_text()[-3000:]
        db_failover = second[1] - t_cut
        assert second[2] == holder[y.tag]
        time.sleep(2 * TICK_S)
        # Fenced: once y decided, x called the cloud no more and recorded nothing.
        late = [e for e in _journal(journal) if e["pid"] == x.pid and datetime.fromisoformat(e["at"]).timestamp()
                > second[1]]
        assert late == []
        assert [r for r in _decisions(pg_server, dbname) if r[0] > second[0] and _holder(r[3]) != holder[y.tag]] == []

        # x gets the database back and stands by.
        t_heal = time.time()
        proxies[daemons.index(x)].heal()
        assert wait_until(lambda: any(e["timestamp"] > datetime.utcfromtimestamp(t_heal).isoformat()
                                      for e in x.events("standby")), 60), x.log_text()[-3000:]
        st, text = _status(pg_server.url(dbname))
        roles = {r["holder"]: r["role"] for r in st["daemons"]}
        assert roles.get(holder[y.tag]) == "leader" and roles.get(holder[x.tag]) == "standby"

        writer.stop()
        # The last requests are counted by the leader, then everyone stops cleanly.
        with _pg(pg_server, dbname) as conn:
            def counted():
                row = conn.execute("SELECT cursor FROM demand_cursors WHERE service = 'chat'").fetchone()
                cur = row[0] if isinstance(row[0], dict) else json.loads(row[0])
                return (cur.get("emitted_until") or 0) > writer.last_ts
            assert wait_until(counted, 60)
            stored = Counter({(i, j): int(round(n)) for i, j, n in conn.execute(
                "SELECT input_bucket, output_bucket, SUM(requests) FROM demand_windows WHERE service = 'chat' "
                "GROUP BY input_bucket, output_bucket").fetchall() if n})
        for d in (x, y):
            assert d.stop() == 0, d.log_text()[-2000:]

        # Every request once, across two failovers; tokens only grow; no machine created twice.
        assert stored == writer.counts and writer.written > 100
        tokens = [((r[3] or {}).get("lease") or {}).get("token") for r in _decisions(pg_server, dbname)]
        assert None not in tokens and tokens == sorted(tokens) and len(set(tokens)) >= 3
        names = [e["name"] for e in _journal(journal) if e["event"] == "created"]
        assert len(names) == len(set(names))
        logs = "\n".join(d.log_text() for d in daemons)
        assert PG_PASSWORD not in logs and "IllegalTransition" not in logs
        assert "***@127.0.0.1" in logs  # the started line names the store, masked
        with capsys.disabled():
            print(f"\nfailover after the leader's SIGKILL: {kill_failover:.2f} s; after the leader lost the "
                  f"database: {db_failover:.2f} s (tick {TICK_S:.0f} s, leader.ttl_s 4, renew_every_s 1.5)")
        assert kill_failover <= 2 * TICK_S and db_failover <= 2 * TICK_S
    finally:
        writer.stop()
        for d in daemons:
            if d.alive():
                d.kill()
        for p in proxies:
            p.close()
        try:
            pg_server.drop_database(dbname)
        except Exception:
            pass
