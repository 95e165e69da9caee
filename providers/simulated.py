"""A simulated cloud, as good as the real one for testing, demos and replay.

It keeps the Provider protocol's semantics (asynchronous idempotent launch,
eventually consistent list, idempotent terminate) and reads time only from the
injected clock, so it runs in wall time under fleetd and in virtual time under
`fleetctl simulate`. Everything random is seeded; each spot location draws from
its own stream (seeded by the location's name) so the outages one zone suffers
do not depend on what happened elsewhere or in which order the loop called us.

Knobs (SimulatedProviderConfig): launch latency, capacity stockouts, launch
failures, zone-wide spot losses from a per-zone hazard, or replayed from real
availability traces (providers/spot_traces.py).

With a state file the simulated cloud is one cloud for every process that opens
it, as a real one is: each call takes an exclusive lock on `<state>.lock`, reads
the file if another process changed it, acts, and writes it back. Several
`fleetd` (a leader and its standbys) and their restarts therefore see the same
machines. An optional journal (`journal_file`, set by the test hook in
providers/faults.py) appends one line per machine event: the cloud's own
record of what was created and ended, which the crash campaign checks the
store against.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import random
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Callable

from daemon.config import SimulatedProviderConfig
from daemon.private import write_private_atomic
from daemon.domain import Market, Offering
from providers.base import (
    FailureKind, InstanceStatus, LaunchError, LaunchRequest, OfferingsSnapshot, ProviderInstance,
)
from providers.spot_traces import AvailabilityTrace, load_trace_dir

# A zone-wide spot loss lasts this long on average before capacity returns
# (SkyServe/SpotHedge report correlated zone outages of tens of minutes).
MEAN_OUTAGE_S = 1800.0
# Terminal instances stay listed this long, like a cloud's eventually consistent API.
RETAIN_TERMINAL_S = 3600.0


class OfferingsFileError(Exception):
    pass


def load_offerings(path: str | Path | None = None) -> list[Offering]:
    """Offerings from a CSV (cloud, region, zone, instance_type, gpu, gpu_count, on_demand, spot, source).

    One row gives an on-demand offering and, where `spot` is set, a spot one.
    The bundled table holds real 2026 catalog prices; each row names its source.
    """
    if path is None:
        text = resources.files("providers").joinpath("data/offerings.csv").read_text()
        src = "providers/data/offerings.csv"
    else:
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except OSError as e:
            raise OfferingsFileError(f"{path}: cannot read offerings: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise OfferingsFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): not an offerings CSV") \
                from None
        src = str(path)
    out: list[Offering] = []
    reader = csv.DictReader(text.splitlines())
    need = {"cloud", "region", "zone", "instance_type", "gpu", "gpu_count", "on_demand", "spot"}
    try:
        missing = need - set(reader.fieldnames or [])
    except csv.Error as e:
        raise OfferingsFileError(f"{src}:1: not CSV: {e}") from None
    if missing:
        raise OfferingsFileError(f"{src}: missing columns {sorted(missing)}")
    line = 1
    try:
        for line, row in enumerate(reader, start=2):
            out += _offering_row(src, line, row)
    except csv.Error as e:
        raise OfferingsFileError(f"{src}:{line + 1}: not CSV: {e}") from None
    if not out:
        raise OfferingsFileError(f"{src}: no offerings in it")
    return out


def _offering_row(src: str, line: int, row: dict) -> list[Offering]:
    if None in row or any(row.get(k) is None for k in ("cloud", "region", "zone", "instance_type", "gpu",
                                                       "gpu_count", "on_demand", "spot")):
        raise OfferingsFileError(f"{src}:{line}: expected one value per column of the header")
    try:
        base = dict(
            cloud=row["cloud"].strip(), region=row["region"].strip(), zone=row["zone"].strip() or None,
            instance_type=row["instance_type"].strip(), gpu=row["gpu"].strip(), gpu_count=int(row["gpu_count"]),
        )
        od = float(row["on_demand"])
        spot = float(row["spot"]) if row["spot"].strip() else None
    except (ValueError, TypeError) as e:
        raise OfferingsFileError(f"{src}:{line}: bad value: {e}") from None
    for name in ("cloud", "region", "instance_type", "gpu"):
        if not base[name]:
            raise OfferingsFileError(f"{src}:{line}: {name} is empty")
    if not 1 <= base["gpu_count"] <= 64:
        raise OfferingsFileError(f"{src}:{line}: gpu_count must be 1..64, got {base['gpu_count']}")
    # Finite and within what any GPU machine costs ($/h): inf or nan would make every plan fail.
    for what, price in (("on_demand", od), ("spot", spot)):
        if price is not None and not (math.isfinite(price) and 0 < price <= 10_000):
            raise OfferingsFileError(f"{src}:{line}: {what} price must be > 0 and <= 10000 $/h, got {price}")
    out = [Offering(**base, market=Market.ON_DEMAND, price_per_hour=od)]
    if spot is not None:
        out.append(Offering(**base, market=Market.SPOT, price_per_hour=spot))
    return out


@dataclass
class _SimInstance:
    name: str
    offering: Offering
    status: InstanceStatus
    since: datetime
    ready_at: datetime
    will_fail: bool
    failure: FailureKind | None = None
    detail: str = ""


class SimulatedProvider:
    name = "simulated"

    def __init__(self, cfg: SimulatedProviderConfig, clock: Callable[[], datetime],
                 journal_file: str | Path | None = None):
        self.cfg = cfg
        self._clock = clock
        self._rng = random.Random(cfg.seed)
        offerings = load_offerings(cfg.offerings_file)
        if cfg.clouds:
            offerings = [o for o in offerings if o.cloud in cfg.clouds]
        self._offerings = {o.key: o for o in offerings}
        self._snapshot: OfferingsSnapshot | None = None
        self._instances: dict[str, _SimInstance] = {}
        self._traces: dict[str, AvailabilityTrace] = (
            load_trace_dir(cfg.spot_trace_dir) if cfg.spot_trace_dir else {}
        )
        self._epoch: datetime | None = None  # virtual start: trace offset 0
        self._last: datetime | None = None
        # Hazard model: per location, outage intervals generated lazily in order.
        self._outages: dict[str, list[tuple[datetime, datetime]]] = {}
        self._outage_rng: dict[str, random.Random] = {}
        self.preemption_log: list[tuple[datetime, str, str]] = []  # (time, location, instance)
        self._state_path = Path(cfg.state_file) if cfg.state_file else None
        self._processes = self._replica_processes(cfg)  # None unless replica_processes
        self._state_seen: tuple | None = None  # (inode, mtime_ns, size) of the state file as last read or written
        self._journal = Path(journal_file) if journal_file else None
        if self._state_path is not None:
            with self._shared():
                pass

    # -- the protocol -------------------------------------------------------------

    def offerings_snapshot(self) -> OfferingsSnapshot:
        # The table is read once, at start: its prices are those of that moment.
        if self._snapshot is None:
            self._snapshot = OfferingsSnapshot(self._clock(), tuple(self._offerings.values()))
        return self._snapshot

    def offerings(self) -> list[Offering]:
        return list(self.offerings_snapshot().offerings)

    def unavailable_markets(self, now: datetime) -> frozenset[str]:
        # A real cloud tells only by refusing a launch; the loop learns that from the store.
        return frozenset()

    def launch(self, request: LaunchRequest) -> None:
        with self._shared():
            self._launch(request)

    def _launch(self, request: LaunchRequest) -> None:
        now = self._advance()
        existing = self._instances.get(request.name)
        if existing is not None and existing.status in (InstanceStatus.PENDING, InstanceStatus.RUNNING):
            return  # idempotent by name
        off = self._offerings.get(request.offering.key)
        if off is None:
            raise LaunchError(FailureKind.OTHER, f"unknown offering {request.offering.key}")
        if off.market is Market.SPOT and not self._spot_available(off.location, now):
            raise LaunchError(FailureKind.NO_CAPACITY, f"no spot capacity in {off.location}")
        if self._rng.random() < self.cfg.stockout_probability:
            raise LaunchError(FailureKind.NO_CAPACITY, f"insufficient capacity for {off.instance_type} in {off.location}")
        lo, hi = self.cfg.launch_latency_s
        latency = lo + (hi - lo) * self._rng.random()
        will_fail = self._rng.random() < self.cfg.launch_failure_probability
        self._instances[request.name] = _SimInstance(
            name=request.name, offering=off, status=InstanceStatus.PENDING, since=now,
            ready_at=now + timedelta(seconds=latency), will_fail=will_fail,
        )
        if self._processes is not None:
            self._processes.start(request.name, request.model)
        self._note(now, "created", self._instances[request.name])
        self._save_state()

    def terminate(self, name: str) -> None:
        with self._shared():
            now = self._advance()
            inst = self._instances.get(name)
            if inst is None or inst.status not in (InstanceStatus.PENDING, InstanceStatus.RUNNING):
                return
            inst.status = InstanceStatus.TERMINATED
            inst.since = now
            if self._processes is not None:
                self._processes.stop(name)
            self._note(now, "terminated", inst)
            self._save_state()

    def list(self) -> list[ProviderInstance]:
        with self._shared():
            return self._list()

    def _list(self) -> list[ProviderInstance]:
        now = self._advance()
        out = []
        for inst in self._instances.values():
            out.append(ProviderInstance(
                name=inst.name, status=inst.status, offering_key=inst.offering.key,
                endpoint=self._endpoint(inst) if inst.status is InstanceStatus.RUNNING else None,
                failure=inst.failure, detail=inst.detail, since=inst.since,
            ))
        return out

    def spot_outages(self, location: str, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """When spot capacity in `location` is gone within [start, end]: the market's future, known.

        Read only by the replay's oracle (daemon/policies/oracle.py), which needs perfect
        knowledge of preemptions; the loop never calls it. The clock must have started
        (a first `list`), as the outage schedule counts from there.
        """
        trace = self._trace_for(location)
        if trace is not None:
            epoch = self._epoch or start
            shift = self.cfg.spot_trace_offset_s

            def at(offset: float) -> datetime:
                return epoch + timedelta(seconds=offset - shift)

            return [(max(start, at(a)), min(end, at(b)))
                    for a, b in trace.outages(self._offset(start), self._offset(end))]
        return [(max(s, start), min(e, end)) for s, e in self._outages_until(location, end) if e > start and s < end]

    # -- simulation ---------------------------------------------------------------

    def _advance(self) -> datetime:
        """Apply every event between the last call and now, each at its own time."""
        now = self._clock()
        if self._epoch is None:
            self._epoch = now
        last = self._last or now
        for inst in self._instances.values():
            if inst.status is not InstanceStatus.PENDING:
                continue
            spot = inst.offering.market is Market.SPOT
            # A spot machine whose capacity is lost before it is ready never runs.
            lost_at = self._first_loss(inst.offering.location, max(last, inst.since), min(now, inst.ready_at)) if spot else None
            if lost_at is not None:
                self._preempt(inst, lost_at)
            elif inst.ready_at <= now and self._booted(inst):
                # with a replica process: ready when it was seen answering, not before
                inst.since = inst.ready_at if self._processes is None else now
                if inst.will_fail:
                    inst.status = InstanceStatus.FAILED
                    inst.failure = FailureKind.OTHER
                    inst.detail = "server did not become healthy"
                    self._note(inst.since, "failed", inst)
                else:
                    inst.status = InstanceStatus.RUNNING
                    self._note(inst.since, "ready", inst)
        self._check_processes(now)
        for inst in self._instances.values():
            if inst.status is InstanceStatus.RUNNING and inst.offering.market is Market.SPOT:
                lost_at = self._first_loss(inst.offering.location, max(last, inst.since), now)
                if lost_at is not None:
                    self._preempt(inst, lost_at)
        horizon = now - timedelta(seconds=RETAIN_TERMINAL_S)
        for name in [n for n, i in self._instances.items()
                     if i.status not in (InstanceStatus.PENDING, InstanceStatus.RUNNING) and i.since < horizon]:
            del self._instances[name]
        self._last = max(last, now)
        self._save_state()
        return now

    # -- persistence: a simulated cloud outlives the daemon, as a real one does ----------

    @contextmanager
    def _shared(self):
        """One call at a time across processes; the state as the last writer left it."""
        if self._state_path is None:
            yield
            return
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        from daemon.private import open_private

        fd = open_private(f"{self._state_path}.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seen = self._stat()
            if seen is not None and seen != self._state_seen:
                self._load_state()
                self._state_seen = seen
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self._state_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _note(self, at: datetime, event: str, inst: _SimInstance) -> None:
        """One line in the journal (when there is one): the cloud's record of its machines."""
        if self._journal is None:
            return
        line = json.dumps({"at": at.isoformat(), "event": event, "name": inst.name, "offering": inst.offering.key,
                           "price_per_hour": inst.offering.price_per_hour, "pid": os.getpid()})
        with open(self._journal, "a") as f:
            f.write(line + "\n")

    def _save_state(self) -> None:
        if self._state_path is None:
            return
        doc = {
            "epoch": self._epoch.isoformat() if self._epoch else None,
            "last": self._last.isoformat() if self._last else None,
            "rng": [self._rng.getstate()[0], list(self._rng.getstate()[1]), self._rng.getstate()[2]],
            "instances": [{
                "name": i.name, "offering": i.offering.key, "status": str(i.status), "since": i.since.isoformat(),
                "ready_at": i.ready_at.isoformat(), "will_fail": i.will_fail,
                "failure": str(i.failure) if i.failure else None, "detail": i.detail,
            } for i in self._instances.values()],
        }
        # Atomic (a crash leaves the old state or the new one) and 0600: it lists the fleet's machines.
        write_private_atomic(self._state_path, json.dumps(doc))
        self._state_seen = self._stat()

    def _load_state(self) -> None:
        self._instances = {}

        def when(text) -> datetime:
            t = datetime.fromisoformat(text)
            if t.tzinfo is None:  # compared with the loop's aware clock on every call
                raise ValueError(f"time {text!r} has no UTC offset")
            return t

        try:
            doc = json.loads(self._state_path.read_bytes().decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            self._epoch = when(doc["epoch"]) if doc.get("epoch") else None
            self._last = when(doc["last"]) if doc.get("last") else None
            v, internal, gauss = doc["rng"]
            self._rng.setstate((v, tuple(internal), gauss))
            for d in doc["instances"]:
                off = self._offerings.get(d["offering"])
                if off is None:
                    continue  # no longer offered (edited table): it is reported vanished
                self._instances[d["name"]] = _SimInstance(
                    name=d["name"], offering=off, status=InstanceStatus(d["status"]),
                    since=when(d["since"]), ready_at=when(d["ready_at"]),
                    will_fail=d["will_fail"], failure=FailureKind(d["failure"]) if d["failure"] else None,
                    detail=d["detail"],
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
            raise OfferingsFileError(f"{self._state_path}: unreadable simulated-cloud state: "
                                     f"{type(e).__name__}: {str(e)[:200]}") from None

    def _preempt(self, inst: _SimInstance, at: datetime) -> None:
        inst.status = InstanceStatus.PREEMPTED
        inst.since = at
        inst.detail = f"spot capacity lost in {inst.offering.location}"
        self._note(at, "preempted", inst)
        self.preemption_log.append((at, inst.offering.location, inst.name))
        if self._processes is not None:
            self._processes.kill(inst.name)

    # -- replicas as local processes (replica_processes = true) -----------------------

    @staticmethod
    def _replica_processes(cfg: SimulatedProviderConfig):
        if not cfg.replica_processes:
            return None
        from providers.replica_processes import ReplicaProcesses

        run_dir = cfg.replica_dir or (cfg.state_file + ".replicas" if cfg.state_file else None)
        return ReplicaProcesses(run_dir, cfg.replica_args)

    def _endpoint(self, inst: _SimInstance) -> str | None:
        if self._processes is None:
            return f"http://{inst.name}.sim:8000"
        return self._processes.endpoint(inst.name)

    def _booted(self, inst: _SimInstance) -> bool:
        """Without processes the launch latency is the boot; with them, /health must answer too."""
        if self._processes is None or inst.will_fail:
            return True
        return self._processes.healthy(inst.name)

    def _check_processes(self, now: datetime) -> None:
        """A replica process that died on its own is a machine that broke."""
        if self._processes is None:
            return
        for inst in self._instances.values():
            if inst.status is InstanceStatus.FAILED and self._processes.alive(inst.name):
                self._processes.stop(inst.name)  # never became healthy (will_fail): stop the server
            if inst.status in (InstanceStatus.PENDING, InstanceStatus.RUNNING) and not self._processes.alive(inst.name):
                inst.status = InstanceStatus.FAILED
                inst.failure = FailureKind.OTHER
                inst.detail = "replica process exited"
                inst.since = now

    def close(self) -> None:
        """Stop every replica process (tests, demos); the simulated machines stay in the state."""
        if self._processes is not None:
            self._processes.stop_all()

    def _trace_for(self, location: str) -> AvailabilityTrace | None:
        zone = location.rsplit("/", 1)[-1]
        return self._traces.get(zone)

    def _spot_available(self, location: str, at: datetime) -> bool:
        trace = self._trace_for(location)
        if trace is not None:
            return trace.available(self._offset(at))
        return not any(s <= at < e for s, e in self._outages_until(location, at))

    def _offset(self, at: datetime) -> float:
        epoch = self._epoch or at
        return (at - epoch).total_seconds() + self.cfg.spot_trace_offset_s

    def _first_loss(self, location: str, start: datetime, end: datetime) -> datetime | None:
        """The first moment in (start, end] at which spot capacity in `location` is gone."""
        if end <= start:
            return None
        trace = self._trace_for(location)
        if trace is not None:
            off = self._offset(start)
            if not trace.available(off):
                return start
            change = trace.next_change(off)
            if change is None:
                return None
            at = (self._epoch or start) + timedelta(seconds=change - self.cfg.spot_trace_offset_s)
            return at if at <= end else None
        for s, e in self._outages_until(location, end):
            if e > start and s <= end:
                return max(s, start)
        return None

    def _outages_until(self, location: str, until: datetime) -> list[tuple[datetime, datetime]]:
        rate = self.cfg.spot_preemptions_per_hour
        spans = self._outages.setdefault(location, [])
        if rate <= 0:
            return spans
        rng = self._outage_rng.get(location)
        if rng is None:
            rng = self._outage_rng[location] = random.Random(zlib.crc32(f"{self.cfg.seed}:{location}".encode()))
        cursor = spans[-1][1] if spans else (self._epoch or until)
        while cursor <= until:
            gap = -math.log(1.0 - rng.random()) / rate * 3600.0
            length = -math.log(1.0 - rng.random()) * MEAN_OUTAGE_S
            start = cursor + timedelta(seconds=gap)
            spans.append((start, start + timedelta(seconds=length)))
            cursor = start + timedelta(seconds=length)
        return spans
