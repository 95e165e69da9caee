"""Running fleetd as users do, for the live end-to-end tests: a process, a config file, wall-clock time.

The world at the edge is faked only where it must be: the cloud is the simulated
provider with a state file (it outlives fleetd restarts, as a real cloud does),
and the request log is written by a thread of the test at a rate it controls.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from daemon.config import ServiceConfig
from daemon.domain import BucketGrid
from tests.conftest import REPO

GRID = BucketGrid((0, 256, 1024, 4096, 16384), (0, 64, 256, 1024, 4096))
INPUTS = (60, 300, 2000, 6000)  # one per input bucket
OUTPUTS = (20, 100, 500, 2000)  # one per output bucket
TPUT = 4.0  # req/s one A10G replica sustains in every bucket (a fixed table: the test is about the loop)
# The table is for the model the services run (the config's default): for any other model the
# daemon would plan on its analytical estimate instead, and the test would be about that.
SERVICE_MODEL = ServiceConfig.model_fields["model"].default


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fleet_config(tmp: Path, services: str, tick_s: float = 2.0, window_s: float = 2.0, extra: str = "",
                 name: str = "fleet.toml") -> Path:
    """A fleetd config for a fast live run against the simulated cloud with a state file.

    The metrics exporter listens on a free port (several daemons and test runs share the machine).
    """
    row = "[" + ", ".join([str(TPUT)] * GRID.n_output) + "]"
    if "[metrics]" not in extra:
        extra = f"[metrics]\nport = {free_port()}\n" + extra
    cfg = tmp / name
    cfg.write_text(f"""
[store]
url = "sqlite:///{tmp / 'fleet.db'}"
[loop]
tick_interval_s = {tick_s}
window_s = {window_s}
lead_time_s = 4
misfire_grace_s = 30
endpoints_path = "{tmp / 'endpoints.json'}"
[provider.simulated]
launch_latency_s = [2.0, 4.0]
stockout_probability = 0.0
launch_failure_probability = 0.0
spot_preemptions_per_hour = 0.0
state_file = "{tmp / 'cloud.json'}"
[policy]
spot = false
scale_down_delay_s = 16
drain_s = 2
max_launches_per_tick = 10
max_terminations_per_tick = 10
[solver]
routes_path = "{tmp / 'routes.json'}"
[[capacity]]
model = "{SERVICE_MODEL}"
gpu = "A10G"
tputs = [{", ".join([row] * GRID.n_input)}]
{services}
{extra}
""")
    return cfg


def service_block(name: str, demand: str) -> str:
    return f"""
[[services]]
name = "{name}"
gpus = ["A10G"]
min_replicas = 1
[services.demand]
{demand}
"""


class Fleetd:
    def __init__(self, cfg: Path, tmp: Path, tag: str = "fleetd", env: dict | None = None):
        self.cfg, self.tmp, self.tag = cfg, tmp, tag
        self.env = dict(env or {})  # extra environment (FLEET_DB, NOTIFY_SOCKET, test hooks)
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, env: dict | None = None) -> None:
        log = self.tmp / f"{self.tag}-{len(self.logs)}.log"
        self.logs.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.cli.fleetd", "--config", str(self.cfg),
                                      "--log-json"], cwd=REPO, env=env, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return "\n".join(p.read_text() for p in self.logs if p.exists())

    def events(self, name: str) -> list[dict]:
        """The JSON log lines with this event name, from every run of this daemon."""
        out = []
        for line in self.log_text().splitlines():
            if f'"event": "{name}"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


class RequestWriter(threading.Thread):
    """Appends requests to a log at `rate(t)` req/s (t: seconds since start), stamped with the wall clock.

    Counts what it wrote per size bucket, so the store can be checked request for request.
    """

    def __init__(self, path: Path, fmt: str, rate, seed: int = 1):
        super().__init__(daemon=True)
        self.path, self.fmt, self.rate = path, fmt, rate
        self.rng = random.Random(seed)
        self.counts: Counter = Counter()
        self.last_ts = 0.0
        self.written = 0
        self.halt = threading.Event()
        self.t0 = time.time()
        if fmt == "azure":
            path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        else:
            path.write_text("")

    def _line(self, ts: float, i: int, o: int) -> str:
        if self.fmt == "azure":
            dt = datetime.fromtimestamp(int(ts), tz=timezone.utc)
            return f"{dt:%Y-%m-%d %H:%M:%S}.{int((ts % 1) * 1e7):07d},{i},{o}\n"  # Azure's 7 digits
        return json.dumps({"timestamp": int(ts * 1000), "input_length": i, "output_length": o}) + "\n"

    def run(self) -> None:
        owed = 0.0
        last = time.time()
        with self.path.open("a") as f:
            while not self.halt.wait(0.1):
                now = time.time()
                owed += self.rate(now - self.t0) * (now - last)
                last = now
                lines = []
                while owed >= 1.0:
                    owed -= 1.0
                    i, o = self.rng.randrange(GRID.n_input), self.rng.randrange(GRID.n_output)
                    ts = time.time()
                    lines.append(self._line(ts, INPUTS[i], OUTPUTS[o]))
                    self.counts[(i, o)] += 1
                    self.last_ts = ts
                    self.written += 1
                f.writelines(lines)
                f.flush()

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def db(tmp: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp / "fleet.db", timeout=30)


def stored_counts(tmp: Path, service: str) -> Counter:
    with db(tmp) as c:
        rows = c.execute("SELECT input_bucket, output_bucket, SUM(requests) FROM demand_windows WHERE service = ? "
                         "GROUP BY input_bucket, output_bucket", (service,)).fetchall()
    return Counter({(i, j): int(round(n)) for i, j, n in rows if n})


def emitted_until(tmp: Path, service: str) -> float | None:
    with db(tmp) as c:
        row = c.execute("SELECT cursor FROM demand_cursors WHERE service = ?", (service,)).fetchone()
    if row is None:
        return None
    cur = json.loads(row[0])
    return cur.get("emitted_until") or cur.get("last_end")


def wait_until(pred, timeout: float, step: float = 0.5) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def fleetctl_status(tmp: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "daemon.cli.fleetctl", "status", "--db",
                          f"sqlite:///{tmp / 'fleet.db'}", "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def running(status: dict, service: str) -> int:
    return sum(1 for i in status["instances"] if i["service"] == service and i["state"] == "running")


def decisions(tmp: Path) -> list[tuple[int, str, str | None]]:
    with db(tmp) as c:
        return c.execute("SELECT id, outcome, error FROM decisions ORDER BY id").fetchall()
