"""fleetd as a service, run as a process: systemd's notify protocol, SIGHUP, pause, metrics, one daemon per file.

systemd is not PID 1 here, so the test is systemd's side of the protocol: it
binds the AF_UNIX datagram socket it names in NOTIFY_SOCKET (with a
WATCHDOG_USEC) and reads what fleetd sends. The hung tick is a hung cloud: the
simulated provider's calls block while a file exists (providers/faults.py, the
world's edge), nothing in the daemon is patched.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import REPO
from tests.live_support import Fleetd, fleet_config, service_block, wait_until
from tests.live_support import decisions as _decisions

pytestmark = pytest.mark.slow

DEMO = 'kind = "demo"\ndemo_mean_rps = 6'


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: every datagram, parsed, with its arrival time.

    `on_ready` runs in the receiving thread the moment READY=1 arrives (to look at the
    world as it is then, not later)."""

    def __init__(self, path, on_ready=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.on_ready = on_ready
        self.messages: list[tuple[float, dict]] = []
        self.ready_state: dict | None = None
        self._halt = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._halt.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            if fields.get("READY") == "1" and self.ready_state is None and self.on_ready:
                self.ready_state = self.on_ready()
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, value: str = "1") -> list[float]:
        return [t for t, m in self.messages if m.get(key) == value]

    def close(self):
        self._halt.set()
        self._t.join(2)
        self.sock.close()


def _schema_and_first_sync(tmp):
    def look():
        with sqlite3.connect(tmp / "fleet.db") as c:
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            rev = c.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
        return {"revision": rev and rev[0], "decisions_table": "decisions" in tables,
                "cloud_synced": (tmp / "cloud.json").exists()}
    return look


def test_notify_ready_watchdog_every_tick_stopping_and_a_hung_tick_stops_the_pings(tmp_path):
    hang = tmp_path / "hang"
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"hang_file": str(hang)}))
    cfg = fleet_config(tmp_path, service_block("chat", DEMO), tick_s=1.0, window_s=1.0)
    ns = NotifySocket(tmp_path / "notify.sock", on_ready=_schema_and_first_sync(tmp_path))
    d = Fleetd(cfg, tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "3000000",
                                   "FLEET_SIM_FAULTS": str(faults)})
    try:
        d.start()
        assert wait_until(lambda: ns.times("READY"), 90), d.log_text()[-3000:]
        # READY=1 came once the store was migrated and the provider's first sync was done.
        assert ns.ready_state["revision"] and ns.ready_state["decisions_table"] and ns.ready_state["cloud_synced"]
        assert wait_until(lambda: len(d.events("tick")) >= 8, 60), d.log_text()[-3000:]
        t_ok = time.monotonic()
        ticks_before = len(d.events("tick"))
        time.sleep(5.0)
        ticks = len(d.events("tick")) - ticks_before
        pings = [t for t in ns.times("WATCHDOG") if t_ok <= t]
        assert ticks >= 3 and len(pings) >= ticks - 1, (ticks, len(pings))  # a ping every tick
        healthy = ns.times("WATCHDOG")
        assert max(b - a for a, b in zip(healthy[2:], healthy[3:])) < 3.0  # never a gap systemd would act on
        assert any("STATUS" in m and "decision" in m["STATUS"] for _, m in ns.messages)

        hang.touch()  # the cloud stops answering: the next provider call never returns
        t_hang = time.monotonic()
        time.sleep(6.0)
        late = [t for t in ns.times("WATCHDOG") if t > t_hang + 1.5]  # the tick in flight may ping once
        assert late == [], f"{len(late)} pings while the tick hung"
        assert d.alive()
        hang.unlink()
        t_free = time.monotonic()
        assert wait_until(lambda: [t for t in ns.times("WATCHDOG") if t > t_free], 10), "pings never resumed"

        d.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        assert d.proc.wait(timeout=60) == 0, d.log_text()[-3000:]
        stopping = [t for t in ns.times("STOPPING") if t >= t_term]
        assert stopping and stopping[0] - t_term < 2.0
        assert d.events("stopped")
    finally:
        if d.alive():
            d.kill()
        ns.close()


def decisions(tmp):
    try:
        return _decisions(tmp)
    except sqlite3.OperationalError:  # fleetd has not created its schema yet
        return []


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _outcomes_after(tmp, after_id: int) -> list[str]:
    return [o for i, o, _ in decisions(tmp) if i > after_id]


def _last_id(tmp) -> int:
    rows = decisions(tmp)
    return rows[-1][0] if rows else 0


def test_sighup_pause_and_metrics_on_a_running_daemon(tmp_path):
    from tests.live_support import free_port

    port = free_port()
    services = service_block("chat", DEMO)
    cfg = fleet_config(tmp_path, services, tick_s=1.0, window_s=1.0, extra=f"[metrics]\nport = {port}\n")
    good = cfg.read_text()
    d = Fleetd(cfg, tmp_path)
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    try:
        d.start()
        assert wait_until(lambda: sum(o == "applied" for _, o, _ in decisions(tmp_path)) >= 3, 90), d.log_text()[-3000:]

        # Metrics: updated by every tick; this daemon leads.
        m1 = _scrape(port)
        time.sleep(2.5)
        m2 = _scrape(port)
        assert m2['gpufleet_ticks_total{outcome="applied"}'] > m1['gpufleet_ticks_total{outcome="applied"}']
        assert m2["gpufleet_leader"] == 1.0 and m2["gpufleet_paused"] == 0.0
        assert any(k.startswith("gpufleet_instances{") for k in m2)

        # SIGHUP with a bad file: refused, naming the key; the old config runs on.
        cfg.write_text(good.replace("[policy]\n", '[policy]\nheadroom = "lots"\n'))
        mark = _last_id(tmp_path)
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: d.events("config_reload_refused"), 20), d.log_text()[-3000:]
        refused = d.events("config_reload_refused")[0]
        assert "policy.headroom" in refused["message"] and str(cfg) in refused["message"]
        assert wait_until(lambda: len(_outcomes_after(tmp_path, mark)) >= 3, 30)
        assert d.alive() and set(_outcomes_after(tmp_path, mark)) == {"applied"}

        # A good file: taken between ticks; dry_run from the next tick on.
        cfg.write_text(good.replace("[policy]\n", "[policy]\ndry_run = true\n"))
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: d.events("config_reloaded"), 20), d.log_text()[-3000:]
        assert "policy.dry_run" in d.events("config_reloaded")[0]["message"]
        mark = _last_id(tmp_path)
        assert wait_until(lambda: len(_outcomes_after(tmp_path, mark)) >= 2, 30)
        assert _outcomes_after(tmp_path, mark)[-1] == "dry_run"
        assert _outcomes_after(tmp_path, mark)[1:] == ["dry_run"] * (len(_outcomes_after(tmp_path, mark)) - 1)
        cfg.write_text(good)
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: len(d.events("config_reloaded")) >= 2, 20)

        # fleetctl pause: kept in the store, honoured from the next tick; resume likewise.
        mark = _last_id(tmp_path)
        r = subprocess.run([sys.executable, "-m", "daemon.cli.fleetctl", "pause", "--db", db, "--note", "test"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: "paused" in _outcomes_after(tmp_path, mark), 20)
        after = _outcomes_after(tmp_path, mark)
        first = after.index("paused")
        assert first <= 2 and set(after[first:]) == {"paused"}  # the tick in flight may have read before
        assert wait_until(lambda: _scrape(port)["gpufleet_paused"] == 1.0, 10)
        mark = _last_id(tmp_path)
        r = subprocess.run([sys.executable, "-m", "daemon.cli.fleetctl", "resume", "--db", db],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: "applied" in _outcomes_after(tmp_path, mark), 20)
        assert _outcomes_after(tmp_path, mark).index("applied") <= 2
        assert d.stop() == 0
    finally:
        if d.alive():
            d.kill()


def test_a_second_fleetd_on_one_sqlite_file_refuses_and_a_restart_leads_at_once(tmp_path):
    # The default lease TTL (30 s): a restart after a SIGKILL must not wait it out on SQLite.
    cfg = fleet_config(tmp_path, service_block("chat", DEMO), tick_s=1.0, window_s=1.0)
    first = Fleetd(cfg, tmp_path, tag="first")
    try:
        first.start()
        assert wait_until(lambda: len(first.events("tick")) >= 2, 90), first.log_text()[-3000:]
        cfg2 = fleet_config(tmp_path, service_block("chat", DEMO), tick_s=1.0, window_s=1.0, name="second.toml")
        r = subprocess.run([sys.executable, "-m", "daemon.cli.fleetd", "--config", str(cfg2)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 4, r.stderr
        assert re.search(r"another fleetd already runs on this database \(pid %d " % first.pid, r.stderr), r.stderr
        assert "PostgreSQL" in r.stderr  # says what to do instead
        n = len(first.events("tick"))
        assert wait_until(lambda: len(first.events("tick")) > n + 1, 20) and first.alive()

        first.kill()
        t0 = time.time()
        first.start()
        assert wait_until(lambda: len(first.events("leading")) >= 2, 60), first.log_text()[-3000:]
        took = time.time() - t0
        assert took < 25, f"the restarted daemon waited {took:.0f} s for its dead predecessor's lease"
        assert first.events("leading")[-1]["token"] == first.events("leading")[0]["token"] + 1
        assert sum(e["count"] for e in first.events("interrupted_decisions_closed")) <= 1  # the killed tick, if any
        assert first.stop() == 0
    finally:
        if first.alive():
            first.kill()
