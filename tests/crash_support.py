"""The crash campaign: fleetd SIGKILLed at aimed points of its tick, restarted each time, then checked.

Used by tests/test_crash_campaign.py (a short campaign in CI) and
bench/crash_campaign.py (100+ kills, figures printed). One campaign:

1. A request log that a thread of the campaign writes (its rate steps up and
   down, so the fleet grows and shrinks the whole time), the simulated cloud with
   a state file and a journal (its own record of every machine), and provider
   faults injected at its edge (providers/faults.py): refused launches, launches
   accepted and then timed out, exceptions, stale and contradictory lists.
2. Runs of fleetd, each started with `FLEET_CRASH_AT=<point>:<n>` (daemon/crashpoint.py):
   the n-th pass through that point of the tick SIGKILLs it. Points cover every
   transaction (before and after its commit), the gap between an intent and its
   provider call, the middle of apply and the forecast refit. Some runs are
   instead killed at a random moment (the start and the migration included),
   and some are stopped with SIGTERM, which must exit 0.
3. A last run without faults or kills, settling; then SIGTERM.
4. Checks (`check`), from the store, the cloud's journal and state, the request log
   counts and the daemon's logs:
   - no duplicate launch: no machine name created twice in the cloud, no two instances with one name;
   - no orphan: the cloud's live machines and the store's live instances are the same names;
   - no instance stuck: nothing `requested`, nothing provisioning, draining or terminating past its timeout;
   - no lost or half-recorded decision: none left `started`, at most one `interrupted` per kill, each
     decision's launch actions match the instances created by it, each instance's state is the end
     of its event chain and every step of the chain is a legal transition, every tick the log
     reports is in the store with that outcome;
   - demand windows complete: the store holds every request written, once;
   - the budget cap is never exceeded at any instant (instance intervals x price, from the store;
     the cloud's journal gives the same sum for what it billed, reported beside it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from daemon.crashpoint import POINTS
from daemon.lifecycle import IllegalTransition, State, check_transition
from tests.live_support import GRID, SERVICE_MODEL, RequestWriter, free_port, stored_counts, wait_until

REPO = Path(__file__).resolve().parents[1]
BUDGET = 3.0  # $/h: binds at the demand's peak (A10G spot ~$0.46-0.54/h, on-demand $1.006/h)
TICK_S = 1.0
LAUNCH_TIMEOUT_S = 12.0
TERMINATE_TIMEOUT_S = 12.0
DRAIN_S = 1.0

FAULTS = {"launch_refused": 0.06, "launch_no_capacity": 0.04, "launch_exception": 0.04, "launch_timeout": 0.05,
          "terminate_exception": 0.05, "terminate_timeout": 0.05, "list_exception": 0.04, "list_stale": 0.08,
          "list_contradictory": 0.05, "timeout_s": 0.3}


def campaign_config(tmp: Path) -> Path:
    row = "[" + ", ".join(["4.0"] * GRID.n_output) + "]"
    cfg = tmp / "fleet.toml"
    cfg.write_text(f"""
[store]
url = "sqlite:///{tmp / 'fleet.db'}"
[loop]
tick_interval_s = {TICK_S}
window_s = {TICK_S}
lead_time_s = 2
misfire_grace_s = 30
[provider.simulated]
launch_latency_s = [1.0, 3.0]
stockout_probability = 0.03
launch_failure_probability = 0.05
spot_preemptions_per_hour = 3.0  # per zone-hour: a few zone losses per campaign (each ~30 min: MEAN_OUTAGE_S)
state_file = "{tmp / 'cloud.json'}"
[policy]
spot = true
budget_per_hour = {BUDGET}
scale_down_delay_s = 3
drain_s = {DRAIN_S}
max_launches_per_tick = 4
max_terminations_per_tick = 4
market_cooldown_s = 5
max_market_cooldown_s = 20
launch_timeout_s = {LAUNCH_TIMEOUT_S}
terminate_timeout_s = {TERMINATE_TIMEOUT_S}
drain_timeout_s = 10
[metrics]
port = {free_port()}
[[capacity]]
model = "{SERVICE_MODEL}"  # the services' model, so the fixed table is what the daemon plans on
gpu = "A10G"
tputs = [{", ".join([row] * GRID.n_input)}]
[[services]]
name = "chat"
gpus = ["A10G"]
min_replicas = 1
[services.demand]
kind = "request-log"
path = "{tmp / 'chat.jsonl'}"
lateness_s = 1
""")
    return cfg


def demand_rate(t: float) -> float:
    """Requests per second: 3 for 15 s, 14 for 15 s, and again (the fleet grows, then shrinks)."""
    return 14.0 if (t // 15) % 2 == 1 else 3.0


@dataclass
class Run:
    how: str  # "aimed", "random", "sigterm", "settle"
    point: str | None
    n: int | None
    rc: int | None = None
    landed: bool = False  # an aimed kill that hit its point (not our fallback kill)
    seconds: float = 0.0
    log: Path | None = None


@dataclass
class Campaign:
    tmp: Path
    aimed: int = 34
    random_kills: int = 4
    sigterms: int = 3
    seed: int = 1
    faults: bool = True
    settle_s: float = 20.0
    run_timeout_s: float = 15.0
    runs: list[Run] = field(default_factory=list)
    writer: RequestWriter | None = None

    # -- running ------------------------------------------------------------------------------

    def _faults(self, on: bool) -> None:
        plan = dict(FAULTS) if on else {}
        plan.update(seed=self.seed, journal=str(self.tmp / "journal.jsonl"))
        (self.tmp / "faults.json").write_text(json.dumps(plan))

    def _start(self, k: int, crash: str | None) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"run-{k:03d}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLEET_SIM_FAULTS": str(self.tmp / "faults.json")}
        env.pop("FLEET_CRASH_AT", None)
        if crash:
            env["FLEET_CRASH_AT"] = crash
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli.fleetd", "--config", str(self.cfg), "--log-json"],
                                cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        return proc, log

    def schedule(self) -> list[Run]:
        rng = random.Random(self.seed)
        plan: list[Run] = []
        for k in range(self.aimed):
            point = POINTS[k % len(POINTS)]
            # The first pass, or a later one: a later tick, a later launch in the same apply.
            n = 1 if k < len(POINTS) else rng.choice((1, 2, 3, 5))
            if point == "refit.during":
                n = 1  # the refit runs a second after the start, then once a minute
            plan.append(Run("aimed", point, n))
        plan += [Run("random", None, None) for _ in range(self.random_kills)]
        plan += [Run("sigterm", None, None) for _ in range(self.sigterms)]
        rng.shuffle(plan)
        return plan

    def run(self, progress=None) -> "Campaign":
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cfg = campaign_config(self.tmp)
        self._faults(self.faults)
        self.writer = RequestWriter(self.tmp / "chat.jsonl", "jsonl", demand_rate, seed=self.seed)
        self.writer.start()
        rng = random.Random(self.seed + 1)
        t_all = time.time()
        for k, r in enumerate(self.schedule()):
            t0 = time.time()
            proc, r.log = self._start(k, f"{r.point}:{r.n}" if r.how == "aimed" else None)
            if r.how == "aimed":
                try:
                    r.rc = proc.wait(timeout=self.run_timeout_s)
                    r.landed = r.rc == -signal.SIGKILL
                except subprocess.TimeoutExpired:  # the point was not reached in time: kill it here
                    proc.kill()
                    r.rc = proc.wait(30)
            elif r.how == "random":
                time.sleep(rng.uniform(0.3, 8.0))  # the start and the migration included
                proc.kill()
                r.rc = proc.wait(30)
            else:
                _wait_for_ticks(r.log, 2 + rng.randrange(4), 60)
                time.sleep(rng.uniform(0.0, TICK_S))  # most likely inside a tick
                proc.send_signal(signal.SIGTERM)
                r.rc = proc.wait(60)
            r.seconds = time.time() - t0
            self.runs.append(r)
            if progress:
                progress(k, r)
        # Settle: no faults, no kill; then the last requests are counted and fleetd stops cleanly.
        self._faults(False)
        proc, log = self._start(len(self.runs), None)
        settle = Run("settle", None, None, log=log)
        time.sleep(self.settle_s)
        self.writer.stop()
        last = self.writer.last_ts
        wait_until(lambda: (_emitted_until(self.tmp) or 0) > last, 60)
        time.sleep(3 * TICK_S)
        # With the load stopped the plan scales down: the last ticks may have asked the cloud to
        # terminate machines whose end a later tick confirms. Stop once no intent is outstanding
        # (bounded: a daemon that never settles is caught by the checks).
        wait_until(lambda: not self._outstanding_intents(), 60)
        proc.send_signal(signal.SIGTERM)
        settle.rc = proc.wait(60)
        self.runs.append(settle)
        self.wall_s = time.time() - t_all
        return self

    def _outstanding_intents(self) -> int:
        with _db(self.tmp) as c:
            return c.execute("SELECT COUNT(*) FROM instances WHERE state IN ('requested', 'terminating')").fetchone()[0]

    # -- figures ---------------------------------------------------------------------------------

    def counts(self) -> dict:
        kills = [r for r in self.runs if r.rc == -signal.SIGKILL]
        journal = _journal(self.tmp)
        with _db(self.tmp) as c:
            n_inst = c.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            n_dec = c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
            outcomes = Counter(o for (o,) in c.execute("SELECT outcome FROM decisions"))
            reasons = Counter(r for (r,) in c.execute("SELECT reason FROM instance_events"))
        return {
            "runs": len(self.runs), "restarts": len(self.runs) - 1, "sigkills": len(kills),
            "aimed_kills_landed": sum(r.landed for r in self.runs),
            "aimed_by_point": dict(Counter(r.point for r in self.runs if r.landed)),
            "aimed_not_reached": sum(r.how == "aimed" and not r.landed for r in self.runs),
            "random_kills": sum(r.how == "random" for r in self.runs),
            "sigterms": sum(r.how == "sigterm" for r in self.runs),
            "sigterm_clean_exits": sum(r.how == "sigterm" and r.rc == 0 for r in self.runs),
            "decisions": n_dec, "decision_outcomes": dict(outcomes), "instances": n_inst,
            "cloud_machines_created": sum(e["event"] == "created" for e in journal),
            "preemptions": sum(e["event"] == "preempted" for e in journal),
            "faults_injected": dict(Counter(e["kind"] for e in journal if e["event"] == "fault")),
            "requests_written": self.writer.written if self.writer else 0,
            "events_by_reason": dict(reasons), "wall_s": round(getattr(self, "wall_s", 0.0), 1),
        }

    # -- checks ----------------------------------------------------------------------------------

    def check(self) -> dict[str, list[str]]:
        """Every invariant, each with the list of what broke it (empty: held)."""
        kills = sum(r.rc == -signal.SIGKILL for r in self.runs)
        out: dict[str, list[str]] = {}
        journal = _journal(self.tmp)
        cloud = json.loads((self.tmp / "cloud.json").read_text())
        with _db(self.tmp) as c:
            inst = {r[0]: r for r in c.execute(
                "SELECT id, name, state, state_since, launched_at, ended_at, price_per_hour, drain_until, decision_id "
                "FROM instances")}
            events = defaultdict(list)
            for iid, frm, to, dec, at in c.execute("SELECT instance_id, from_state, to_state, decision_id, at "
                                                   "FROM instance_events ORDER BY id"):
                events[iid].append((frm, to, dec, at))
            decs = c.execute("SELECT id, outcome, actions, inputs FROM decisions ORDER BY id").fetchall()
            dup_windows = c.execute("SELECT COUNT(*) FROM (SELECT 1 FROM demand_windows GROUP BY service, "
                                    "window_start, input_bucket, output_bucket HAVING COUNT(*) > 1)").fetchone()[0]
            last_tick = max((r[0] for r in decs), default=0)

        created = Counter(e["name"] for e in journal if e["event"] == "created")
        names = Counter(r[1] for r in inst.values())
        out["duplicate_launch"] = ([f"{n}: created {k} times in the cloud" for n, k in created.items() if k > 1]
                                   + [f"{n}: {k} instances with one name" for n, k in names.items() if k > 1])

        live_cloud = {i["name"] for i in cloud["instances"] if i["status"] in ("pending", "running")}
        live_store = {r[1] for r in inst.values() if r[2] in ("provisioning", "running", "draining", "terminating")}
        out["orphan"] = ([f"{n}: live in the cloud, not in the store" for n in sorted(live_cloud - live_store)]
                         + [f"{n}: live in the store ({next(r[2] for r in inst.values() if r[1] == n)}), "
                            "not in the cloud" for n in sorted(live_store - live_cloud)])
        out["unknown_machine"] = [f"{n}: the cloud created a machine the store never recorded"
                                  for n in sorted(set(created) - set(names))]

        now = _last_at(self.tmp)
        limits = {"provisioning": LAUNCH_TIMEOUT_S + 3 * TICK_S, "terminating": TERMINATE_TIMEOUT_S + 3 * TICK_S,
                  "draining": DRAIN_S + 10 + 3 * TICK_S}
        stuck = []
        for iid, name, state, since, *_ in inst.values():
            if state == "requested":
                stuck.append(f"{iid}: still requested")
            elif state in limits and (now - _ts(since)).total_seconds() > limits[state]:
                stuck.append(f"{iid}: {state} for {(now - _ts(since)).total_seconds():.0f} s")
        out["stuck"] = stuck

        bad: list[str] = []
        started = [d for d, o, *_ in decs if o == "started"]
        if started:
            bad.append(f"decisions left started: {started}")
        interrupted = sum(o == "interrupted" for _, o, *_ in decs)
        if interrupted > kills:
            bad.append(f"{interrupted} interrupted decisions for {kills} kills")
        created_by = Counter(ev[0][2] for ev in events.values() if ev and ev[0][0] is None and ev[0][2] is not None)
        for d, outcome, actions, inputs in decs:
            acts = _json(actions) or []
            mode = (_json(inputs) or {}).get("mode")
            launches = sum(a.get("kind") == "launch" for a in acts)
            # The decision and its intents are one transaction: all of them, or none.
            if created_by.get(d, 0) != (launches if mode == "apply" else 0):
                bad.append(f"decision {d} ({outcome}, {mode}): {launches} launch actions, "
                           f"{created_by.get(d, 0)} instances created by it")
        for iid, r in inst.items():
            chain = events.get(iid, [])
            if not chain or chain[0][0] is not None:
                bad.append(f"{iid}: history does not start at its creation")
                continue
            if chain[-1][1] != r[2]:
                bad.append(f"{iid}: state {r[2]} but its last event says {chain[-1][1]}")
            for frm, to, _, _ in chain[1:]:
                try:
                    check_transition(State(frm), State(to))
                except IllegalTransition as e:
                    bad.append(f"{iid}: {e}")
        ids = {d: o for d, o, *_ in decs}
        for run in self.runs:
            for e in _events(run.log, "tick"):
                if ids.get(e["decision"]) != e["outcome"]:
                    bad.append(f"{run.log.name}: tick {e['decision']} logged {e['outcome']}, "
                               f"store has {ids.get(e['decision'])}")
        out["decisions"] = bad

        windows = []
        if dup_windows:
            windows.append(f"{dup_windows} demand cells stored twice")
        stored = stored_counts(self.tmp, "chat")
        if self.writer and stored != self.writer.counts:
            diff = {k: (self.writer.counts.get(k, 0), stored.get(k, 0)) for k in set(stored) | set(self.writer.counts)
                    if stored.get(k, 0) != self.writer.counts.get(k, 0)}
            windows.append(f"requests per bucket (written, stored) differ: {diff}")
        out["demand_windows"] = windows

        peak, at = budget_peak([(_ts(r[4]), _ts(r[5]) if r[5] else now, r[6]) for r in inst.values() if r[4]])
        self.store_peak_usd_per_hour = peak
        out["budget"] = [f"{peak:.4f} $/h at {at} > budget {BUDGET}"] if peak > BUDGET + 1e-6 else []
        self.cloud_peak_usd_per_hour, self.cloud_peak_at = budget_peak(_cloud_intervals(journal, now))

        out["sigterm"] = [f"{r.log.name}: SIGTERM exit {r.rc}" for r in self.runs
                          if r.how in ("sigterm", "settle") and r.rc != 0]
        out["tracebacks"] = [f"{r.log.name}: {line[:300]}" for r in self.runs for line in _lines(r.log)
                             if "IllegalTransition" in line or '"tick_crashed"' in line or '"job_crashed"' in line]
        self.last_decision = last_tick
        return out


def budget_peak(intervals: list[tuple[datetime, datetime, float]]) -> tuple[float, datetime | None]:
    """The highest sum of $/h over time of [start, end) intervals (a sweep over their ends)."""
    points = sorted([(s, 1, p) for s, e, p in intervals if e > s] + [(e, 0, -p) for s, e, p in intervals if e > s],
                    key=lambda x: (x[0], x[1]))  # ends before starts at the same instant
    cur = peak = 0.0
    at = None
    for t, _, dp in points:
        cur += dp
        if cur > peak + 1e-12:
            peak, at = cur, t
    return peak, at


def _cloud_intervals(journal: list[dict], now: datetime) -> list[tuple[datetime, datetime, float]]:
    start: dict[str, tuple[datetime, float]] = {}
    out = []
    for e in journal:
        if e["event"] == "created":
            start[e["name"]] = (datetime.fromisoformat(e["at"]), e["price_per_hour"])
        elif e["event"] in ("terminated", "preempted", "failed") and e["name"] in start:
            s, p = start.pop(e["name"])
            out.append((s, datetime.fromisoformat(e["at"]), p))
    out += [(s, now, p) for s, p in start.values()]
    return out


def _db(tmp: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp / "fleet.db", timeout=30)


def _ts(v) -> datetime:
    from datetime import timezone

    t = datetime.fromisoformat(v) if isinstance(v, str) else v
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _last_at(tmp: Path) -> datetime:
    with _db(tmp) as c:
        return _ts(c.execute("SELECT MAX(at) FROM decisions").fetchone()[0])


def _json(v):
    return json.loads(v) if isinstance(v, str) else v


def _emitted_until(tmp: Path) -> float | None:
    try:
        with _db(tmp) as c:
            row = c.execute("SELECT cursor FROM demand_cursors WHERE service = 'chat'").fetchone()
    except sqlite3.OperationalError:
        return None
    return json.loads(row[0]).get("emitted_until") if row else None


def _journal(tmp: Path) -> list[dict]:
    p = tmp / "journal.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def _lines(log: Path | None) -> list[str]:
    return log.read_text(errors="replace").splitlines() if log and log.exists() else []


def _events(log: Path | None, name: str) -> list[dict]:
    out = []
    for line in _lines(log):
        if f'"event": "{name}"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # the line a SIGKILL cut short
    return out


def _wait_for_ticks(log: Path, n: int, timeout: float) -> bool:
    return wait_until(lambda: len(_events(log, "tick")) >= n, timeout, step=0.1)
