"""SQLAlchemy 2 models. The schema itself is created only by Alembic (migrations/).

Plain columns for what audits group or sum by (service, cloud, region, zone,
GPU, market, price, state, reason); JSON only for blobs nobody queries
(forecast details, the plan, solver statistics).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Datetimes stored naive-UTC, returned timezone-aware: SQLite keeps no zone."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        from datetime import timezone

        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        from datetime import timezone

        return value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class Decision(Base):
    """One tick: what it saw, forecast, planned, did, and how it ended."""

    __tablename__ = "decisions"
    # Covers `fleetctl audit`'s count of decisions by outcome over a window (a year: 525,600 rows).
    __table_args__ = (Index("ix_decisions_at_outcome", "at", "outcome"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str] = mapped_column(String(32))  # started / applied / dry_run / paused / failed
    plan_status: Mapped[str | None] = mapped_column(String(32))
    solver: Mapped[str | None] = mapped_column(String(32))
    solve_seconds: Mapped[float | None] = mapped_column(Float)
    planned_cost_per_hour: Mapped[float | None] = mapped_column(Float)
    fleet_cost_per_hour: Mapped[float | None] = mapped_column(Float)
    forecast_rps: Mapped[float | None] = mapped_column(Float)  # summed over services
    observed_rps: Mapped[float | None] = mapped_column(Float)
    launches: Mapped[int] = mapped_column(Integer, default=0)
    terminations: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    inputs: Mapped[dict | None] = mapped_column(JSON)  # summary of what the tick saw
    forecast: Mapped[dict | None] = mapped_column(JSON)
    plan: Mapped[dict | None] = mapped_column(JSON)
    actions: Mapped[list | None] = mapped_column(JSON)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)  # deterministic provider name
    service: Mapped[str] = mapped_column(String(64), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    cloud: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str | None] = mapped_column(String(64))
    instance_type: Mapped[str] = mapped_column(String(64))
    gpu: Mapped[str] = mapped_column(String(32))
    gpu_count: Mapped[int] = mapped_column(Integer)
    market: Mapped[str] = mapped_column(String(16))
    offering_key: Mapped[str] = mapped_column(String(256), index=True)
    price_per_hour: Mapped[float] = mapped_column(Float)  # price in effect at launch; never recomputed
    # What the same shape would have cost on demand at launch (same instance type in the same
    # region, else the cheapest on-demand of the GPU type and count): the audit's savings baseline.
    on_demand_price_per_hour: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), index=True)
    state_since: Mapped[datetime | None] = mapped_column(UTCDateTime)  # time of the last transition
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    launched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # provider accepted: billing starts
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    drain_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # billing stops
    endpoint: Mapped[str | None] = mapped_column(String(256))
    last_reason: Mapped[str | None] = mapped_column(String(32))


class InstanceEvent(Base):
    __tablename__ = "instance_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str | None] = mapped_column(Text)
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"))


class DemandWindowRow(Base):
    """Observed demand: one row per (service, window, size bucket) with requests in it."""

    __tablename__ = "demand_windows"
    __table_args__ = (Index("ix_demand_service_start", "service", "window_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_seconds: Mapped[float] = mapped_column(Float)
    input_bucket: Mapped[int] = mapped_column(Integer)
    output_bucket: Mapped[int] = mapped_column(Integer)
    requests: Mapped[float] = mapped_column(Float)
    input_tokens: Mapped[float] = mapped_column(Float, default=0.0)
    output_tokens: Mapped[float] = mapped_column(Float, default=0.0)
    # The window's burst peaks, "seconds:req/s" pairs (DemandWindow.peaks), on its first row
    # like the token sums; NULL when the source does not see single requests.
    peaks: Mapped[str | None] = mapped_column(String(256), nullable=True)


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    severity: Mapped[str] = mapped_column(String(16))  # info / warning / critical
    kind: Mapped[str] = mapped_column(String(32), index=True)  # budget / tick_failed / quota / bad_input ...
    message: Mapped[str] = mapped_column(Text)
    service: Mapped[str | None] = mapped_column(String(64))
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"))
    subject: Mapped[str | None] = mapped_column(String(256), index=True)  # instance name, offering key...


class DemandCursor(Base):
    """Where a service's demand source stands; committed with the windows it produced."""

    __tablename__ = "demand_cursors"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    cursor: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SimulationRun(Base):
    """One replay (fleetctl simulate): its window and summary, so audits can tell runs apart."""

    __tablename__ = "simulation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    virtual_start: Mapped[datetime] = mapped_column(UTCDateTime)
    virtual_end: Mapped[datetime] = mapped_column(UTCDateTime)
    workload: Mapped[str] = mapped_column(String(512))
    summary: Mapped[dict | None] = mapped_column(JSON)

    @validates("summary", "workload")
    def _no_secrets(self, _key, value):
        """A replay's summary names its database URL: the store never keeps its password."""
        from daemon.redact import mask_urls_in

        return mask_urls_in(value)


class Lease(Base):
    """A named lease (daemon/store/lease.py): who may act, until when, under which fencing token."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(256))  # None: free (released)
    token: Mapped[int] = mapped_column(BigInteger)  # +1 at every change of holder; never goes down
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DaemonRow(Base):
    """Every fleetd that runs on this store, leader or standby, as it last reported (for status)."""

    __tablename__ = "daemons"

    holder: Mapped[str] = mapped_column(String(256), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # leader / standby / stopped
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    detail: Mapped[str | None] = mapped_column(Text)


class Control(Base):
    """Operator switches kept in the store (`fleetctl pause|resume`), read by the tick at its start."""

    __tablename__ = "controls"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # e.g. "paused"
    value: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str | None] = mapped_column(String(256))
    note: Mapped[str | None] = mapped_column(Text)
