"""The store: the only code that reads and writes the database.

Transitions go through `transition`, which refuses edges the lifecycle table
does not have and writes one `instance_events` row per change: the audit trail
and the preemption history are the same rows.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Iterator, NamedTuple

from sqlalchemy import bindparam, create_engine, event, func, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from daemon.domain import BucketGrid, DemandWindow, FleetInstance, Market, Offering
from daemon.private import create_private
from daemon.lifecycle import BILLABLE, TERMINAL, Reason, State, check_transition
from daemon.store.schema import Alert, Control, Decision, DemandCursor, DemandWindowRow, Instance, InstanceEvent


_CURSOR_UPDATE = (update(DemandCursor.__table__).where(DemandCursor.__table__.c.service == bindparam("svc"))
                  .values(kind=bindparam("kind"), cursor=bindparam("cursor"), updated_at=bindparam("updated_at")))


def make_engine(url: str, durable: bool = True, lease_ttl_s: float | None = None) -> Engine:
    """`durable=False` (replays, whose database can be made again) skips fsync on commit.

    `lease_ttl_s` (fleetd, PostgreSQL): bound how long a lost or partitioned daemon can
    hold locks and how long it waits for a database that is gone. The server ends a
    session left idle inside a transaction for longer than the lease TTL (its share
    lock on the lease row would otherwise keep a standby from taking over for as
    long as TCP takes to notice), and connecting gives up after half the TTL.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:":
            # One shared connection: an in-memory database lives as long as its connection.
            from sqlalchemy.pool import StaticPool

            engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            engine = create_engine(url, connect_args={"timeout": 30})

        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            @event.listens_for(engine, "do_connect")
            def _private_file(_dialect, _rec, _cargs, _cparams):
                # Before SQLite opens (and would create) the file: create it 0600 ourselves.
                # Its -wal/-shm/-journal files take the database file's mode.
                create_private(u.database)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # WAL: `fleetctl status` reads while fleetd writes
            cur = dbapi_conn.cursor()
            if u.database and u.database != ":memory:":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # WAL + FULL: a committed tick survives a power loss; a replay needs no fsync at all.
            cur.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if lease_ttl_s is not None and u.get_backend_name() == "postgresql":
        ms = int(lease_ttl_s * 1000)
        args = {"options": f"-c idle_in_transaction_session_timeout={ms}",
                "connect_timeout": max(2, int(lease_ttl_s / 2)),
                # The client notices a dead server too (libpq keepalive parameters).
                "keepalives": 1, "keepalives_idle": max(1, int(lease_ttl_s / 2)), "keepalives_interval": 1,
                "keepalives_count": 3}
        return create_engine(url, pool_pre_ping=True, connect_args=args)
    return create_engine(url, pool_pre_ping=True)


def offering_of(row: Instance) -> Offering:
    return Offering(
        cloud=row.cloud, region=row.region, zone=row.zone, instance_type=row.instance_type,
        gpu=row.gpu, gpu_count=row.gpu_count, market=Market(row.market), price_per_hour=row.price_per_hour,
    )


def fleet_instance(row: Instance) -> FleetInstance:
    return FleetInstance(
        id=row.id, name=row.name, service=row.service, offering=offering_of(row), state=row.state,
        launched_at=row.launched_at, ready_at=row.ready_at, drain_until=row.drain_until,
        state_since=row.state_since, last_reason=row.last_reason, endpoint=row.endpoint,
    )


def instance_cost(row: Instance, now: datetime) -> float:
    """Billed from the provider's acceptance until the instance ended, at the price stored at launch."""
    if row.launched_at is None:
        return 0.0
    end = row.ended_at or now
    return max(0.0, (end - row.launched_at).total_seconds()) / 3600.0 * row.price_per_hour


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str, durable: bool = True, lease_ttl_s: float | None = None) -> "Store":
        return cls(make_engine(url, durable, lease_ttl_s))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back whole on any error."""
        with Session(self.engine, expire_on_commit=False) as s:
            with s.begin():
                yield s

    # -- demand -------------------------------------------------------------------

    @staticmethod
    def add_demand_windows(s: Session, windows: list[DemandWindow]) -> None:
        """One row per non-empty cell; an observed quiet window keeps one zero row (seen, and quiet).

        The window's token sums ride on its first row: they belong to the window, not a cell.
        One bulk INSERT: this runs every tick.
        """
        rows = []
        for w in windows:
            cells = [(i, j, c) for i, row in enumerate(w.counts) for j, c in enumerate(row) if c > 0] or [(0, 0, 0.0)]
            for k, (i, j, c) in enumerate(cells):
                rows.append({"service": w.service, "window_start": w.start, "window_seconds": w.seconds,
                             "input_bucket": i, "output_bucket": j, "requests": c,
                             "input_tokens": w.input_tokens if k == 0 else 0.0,
                             "output_tokens": w.output_tokens if k == 0 else 0.0,
                             "peaks": _peaks_text(w.peaks) if k == 0 else None})
        if rows:
            s.execute(insert(DemandWindowRow), rows)

    @staticmethod
    def save_cursor(s: Session, service: str, kind: str, cursor: dict, at: datetime) -> None:
        """A demand source's position, in the transaction that stores its windows (an upsert)."""
        values = {"service": service, "kind": kind, "cursor": cursor, "updated_at": at}
        done = s.execute(_CURSOR_UPDATE, {"svc": service, "kind": kind, "cursor": cursor, "updated_at": at})
        if done.rowcount == 0:
            s.execute(insert(DemandCursor.__table__), values)

    @staticmethod
    def cursors(s: Session) -> dict[str, tuple[str, dict]]:
        return {r.service: (r.kind, dict(r.cursor)) for r in s.scalars(select(DemandCursor))}

    @staticmethod
    def demand_history(s: Session, service: str, grid: BucketGrid, since: datetime,
                       until: datetime | None = None) -> list[DemandWindow]:
        t = DemandWindowRow
        # Plain column tuples, not ORM objects: this runs every tick over an hour of rows.
        q = select(t.window_start, t.window_seconds, t.input_bucket, t.output_bucket, t.requests,
                   t.input_tokens, t.output_tokens, t.peaks).where(t.service == service, t.window_start >= since)
        if until is not None:
            q = q.where(t.window_start < until)
        q = q.order_by(t.window_start)
        acc: dict[datetime, dict] = {}
        for start, seconds, i, j, n, tin, tout, peaks in s.execute(q):
            w = acc.get(start)
            if w is None:
                w = acc[start] = {"seconds": seconds, "counts": defaultdict(float), "in": 0.0, "out": 0.0, "peaks": ()}
            if i < grid.n_input and j < grid.n_output:
                w["counts"][(i, j)] += n
            w["in"] += tin or 0.0
            w["out"] += tout or 0.0
            if peaks:
                w["peaks"] = _peaks_of_text(peaks)
        out = []
        for start, w in acc.items():
            counts = tuple(tuple(w["counts"].get((i, j), 0.0) for j in range(grid.n_output))
                           for i in range(grid.n_input))
            out.append(DemandWindow(service, start, w["seconds"], counts, w["in"], w["out"], w["peaks"]))
        return out

    # -- instances ----------------------------------------------------------------

    @staticmethod
    def next_instance_id(s: Session, service: str) -> str:
        n = s.scalar(select(func.count()).select_from(Instance)) or 0
        return f"{service}-{n + 1:06d}"

    @staticmethod
    def create_instance(s: Session, *, instance_id: str, name: str, service: str, provider: str,
                        offering: Offering, at: datetime, reason: Reason, decision_id: int | None,
                        on_demand_price: float | None = None) -> Instance:
        """`on_demand_price`: what the same shape costs on demand now (`on_demand_reference`), the
        audit's savings baseline; None when unknown (the audit then looks it up)."""
        row = Instance(
            on_demand_price_per_hour=on_demand_price,
            id=instance_id, name=name, service=service, provider=provider, cloud=offering.cloud,
            region=offering.region, zone=offering.zone, instance_type=offering.instance_type, gpu=offering.gpu,
            gpu_count=offering.gpu_count, market=str(offering.market), offering_key=offering.key,
            price_per_hour=offering.price_per_hour, state=str(State.REQUESTED), decision_id=decision_id,
            requested_at=at, last_reason=str(reason), state_since=at,
        )
        s.add(row)
        s.add(InstanceEvent(instance_id=instance_id, at=at, from_state=None, to_state=str(State.REQUESTED),
                            reason=str(reason), decision_id=decision_id))
        return row

    @staticmethod
    def transition(s: Session, row: Instance, to: State, reason: Reason, at: datetime, detail: str | None = None,
                   decision_id: int | None = None, drain_until: datetime | None = None) -> None:
        src = State(row.state)
        check_transition(src, to)
        row.state = str(to)
        row.last_reason = str(reason)
        row.state_since = at
        if to is State.PROVISIONING and row.launched_at is None:
            row.launched_at = at
        if to is State.RUNNING:
            if row.launched_at is None:  # adopted: it was billing already; the best we know is now
                row.launched_at = at
            if row.ready_at is None:
                row.ready_at = at
            row.drain_until = None
        if to is State.DRAINING:
            row.drain_until = drain_until
        if to in TERMINAL:
            row.ended_at = max(at, row.launched_at) if row.launched_at else at
        s.add(InstanceEvent(instance_id=row.id, at=at, from_state=str(src), to_state=str(to), reason=str(reason),
                            detail=detail, decision_id=decision_id))

    @staticmethod
    def instances(s: Session, states: frozenset[State] | None = None) -> list[Instance]:
        q = select(Instance)
        if states is not None:
            q = q.where(Instance.state.in_([str(x) for x in states]))
        return list(s.scalars(q.order_by(Instance.requested_at, Instance.id)))

    @staticmethod
    def fleet_rows(s: Session) -> list["FleetRow"]:
        """Every instance not yet ended, as plain rows (what a tick's finish reads)."""
        i = Instance
        q = (select(i.name, i.service, i.gpu, i.gpu_count, i.offering_key, i.endpoint, i.state, i.price_per_hour)
             .where(i.state.in_([str(x) for x in frozenset(State) - TERMINAL])).order_by(i.id))
        return [FleetRow(n, svc, f"{g}x{c}", k, ep, st, p) for n, svc, g, c, k, ep, st, p in s.execute(q)]

    @staticmethod
    def finish_decision(s: Session, decision_id: int, outcome: str, launches: int, terminations: int,
                        fleet_cost_per_hour: float) -> None:
        s.execute(update(Decision).where(Decision.id == decision_id).values(
            outcome=outcome, launches=launches, terminations=terminations, fleet_cost_per_hour=fleet_cost_per_hour))

    @staticmethod
    def fleet_cost_per_hour(s: Session) -> float:
        return float(s.scalar(select(func.coalesce(func.sum(Instance.price_per_hour), 0.0))
                              .where(Instance.state.in_([str(x) for x in BILLABLE]))) or 0.0)

    @staticmethod
    def events_since(s: Session, since: datetime, reasons) -> list["EventRow"]:
        """Transitions with these reasons since `since`, with the columns of their instance (plain rows)."""
        e, i = InstanceEvent, Instance
        q = (select(e.at, e.reason, e.instance_id, i.service, i.cloud, i.region, i.zone, i.market, i.offering_key)
             .join(i, i.id == e.instance_id)
             .where(e.at >= since, e.reason.in_([str(r) for r in reasons])).order_by(e.at, e.id))
        return [EventRow(*r) for r in s.execute(q)]

    # -- decisions and alerts -------------------------------------------------------

    @staticmethod
    def insert_decision(s: Session, at: datetime, **fields) -> int:
        """A decision row inserted whole (one INSERT ... RETURNING; the tick writes one every minute)."""
        values = {"at": at, "outcome": "started", "launches": 0, "terminations": 0, **fields}
        # Parameters apart from the statement, so SQLAlchemy compiles it once, not every tick.
        return int(s.execute(insert(Decision).returning(Decision.id), values).scalar_one())

    @staticmethod
    def start_decision(s: Session, at: datetime, **fields) -> Decision:
        """A decision row, `started` unless told otherwise, inserted now (its id names the intents)."""
        d = Decision(at=at, **{"outcome": "started", "launches": 0, "terminations": 0, **fields})
        s.add(d)
        s.flush()
        return d

    @staticmethod
    def alert(s: Session, at: datetime, severity: str, kind: str, message: str, service: str | None = None,
              decision_id: int | None = None, subject: str | None = None) -> None:
        s.add(Alert(at=at, severity=severity, kind=kind, message=message, service=service, decision_id=decision_id,
                    subject=subject))

    @staticmethod
    def alert_once(s: Session, at: datetime, severity: str, kind: str, subject: str, message: str,
                   service: str | None = None, decision_id: int | None = None) -> bool:
        """Alert about a lasting condition once: not again while an alert of this kind and subject exists."""
        seen = s.scalar(select(func.count()).select_from(Alert).where(Alert.kind == kind, Alert.subject == subject))
        if seen:
            return False
        Store.alert(s, at, severity, kind, message, service, decision_id, subject)
        return True

    @staticmethod
    def forecast_history(s: Session, service: str, grid: BucketGrid, history_s: float, limit: int = 500):
        """(history windows, recorded forecasts) of a service, for `fleetctl forecast show --service`.

        Raises LookupError when there is nothing to show.
        """
        from daemon.domain import DemandForecast

        last = s.scalar(select(Decision.at).order_by(Decision.id.desc()).limit(1))
        if last is None:
            raise LookupError("no decision recorded yet: nothing to show")
        history = Store.demand_history(s, service, grid, last - timedelta(seconds=history_s))
        if not history:
            raise LookupError(f"no demand recorded for service {service!r}")
        forecasts = []
        for at, fc in s.execute(select(Decision.at, Decision.forecast).order_by(Decision.id.desc()).limit(limit)):
            f = (fc or {}).get(service)
            if f:
                forecasts.append(DemandForecast(service, at, f["horizon_s"], f["rate_rps"],
                                                tuple(tuple(r) for r in f.get("mix", [])), f["method"],
                                                f.get("quantile", 0.5), f.get("details", {})))
        return history, list(reversed(forecasts))

    # -- operator controls (fleetctl pause|resume) ---------------------------------------

    @staticmethod
    def paused(s: Session) -> bool:
        """Whether an operator paused the fleet (`fleetctl pause`); the tick reads this at its start
        (one primary-key read) and then plans and records without acting, as policy.paused does."""
        row = s.get(Control, "paused", populate_existing=True)
        return row is not None and row.value == "true"

    @staticmethod
    def set_paused(s: Session, paused: bool, at: datetime, by: str | None = None, note: str | None = None) -> bool:
        """Pause or resume; returns whether it was paused before."""
        row = s.get(Control, "paused", with_for_update=True)
        before = row is not None and row.value == "true"
        if row is None:
            row = Control(name="paused", value="false", updated_at=at)
            s.add(row)
        row.value = "true" if paused else "false"
        row.updated_at, row.updated_by, row.note = at, by, note
        return before

    @staticmethod
    def close_interrupted_decisions(s: Session, at: datetime) -> int:
        """Decisions a crash left at 'started' are marked so; their intents are repaired by the next tick."""
        rows = list(s.scalars(select(Decision).where(Decision.outcome == "started")))
        for d in rows:
            d.outcome = "interrupted"
            d.error = (d.error or "") + f"process stopped before the tick finished (noticed {at.isoformat()})"
        return len(rows)


def on_demand_reference(offering: Offering, offerings: list[Offering]) -> float | None:
    """The on-demand $/h of the same shape: the same instance type in the same cloud and region,
    else the cheapest on-demand offering with the same GPU type and count in that region, else
    anywhere (the baseline `fleetctl audit` computes savings against)."""
    if offering.market is Market.ON_DEMAND:
        return offering.price_per_hour
    od = [o for o in offerings if o.market is Market.ON_DEMAND]
    for match in (lambda o: (o.cloud, o.region, o.instance_type) == (offering.cloud, offering.region,
                                                                     offering.instance_type),
                  lambda o: (o.cloud, o.region, o.gpu, o.gpu_count) == (offering.cloud, offering.region, offering.gpu,
                                                                        offering.gpu_count),
                  lambda o: (o.gpu, o.gpu_count) == (offering.gpu, offering.gpu_count)):
        prices = [o.price_per_hour for o in od if match(o)]
        if prices:
            return min(prices)
    return None


class FleetRow(NamedTuple):
    name: str
    service: str
    pool: str
    offering_key: str
    endpoint: str | None
    state: str
    price_per_hour: float


class EventRow(NamedTuple):
    """A transition with the columns of its instance that the loop's market rules read."""

    at: datetime
    reason: str
    instance_id: str
    service: str
    cloud: str
    region: str
    zone: str | None
    market: str
    offering_key: str

    @property
    def location(self) -> str:
        return "/".join([self.cloud, self.region, self.zone or "-"])


def cooldown_offerings(events: list[EventRow], offerings: list[Offering]) -> frozenset[str]:
    """Spot markets to avoid: every spot offering in a location that recently lost or refused one.

    SkyServe's SpotHedge marks a zone PREEMPTED after a preemption or a failed
    spot launch there (BACKGROUND §3); we do the same, for a cooldown window.
    """
    bad_locs = {e.location for e in events if e.market == str(Market.SPOT)}
    bad_keys = {e.offering_key for e in events}
    out = {o.key for o in offerings if o.market is Market.SPOT and o.location in bad_locs}
    return frozenset(out | {k for k in bad_keys if k.endswith("/spot")})


def hazard_per_location(events: list[EventRow], window: timedelta) -> dict[str, float]:
    hours = window.total_seconds() / 3600.0
    out: dict[str, float] = defaultdict(float)
    for e in events:
        out[e.location] += 1.0 / hours
    return dict(out)


def _peaks_text(peaks: tuple[tuple[float, float], ...]) -> str | None:
    return ",".join(f"{d:g}:{r:.6g}" for d, r in peaks) or None


def _peaks_of_text(text: str) -> tuple[tuple[float, float], ...]:
    """The stored peaks; a malformed value reads as none (the planner then sizes without bursts)."""
    try:
        return tuple((float(d), float(r)) for d, r in (p.split(":") for p in text.split(",")))
    except ValueError:
        return ()
