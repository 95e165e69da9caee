"""Build the judge's timelines from a replay's (or a live daemon's) store.

Reads only what it needs, by column, so tables and columns the schema gains
later (additive migrations) do not matter:
- `instances`: id, name, service, cloud, gpu, gpu_count, market, ready_at, ended_at;
- `instance_events`: instance_id, at, from_state, to_state, reason: a DRAINING
  transition is a drain (and DRAINING -> RUNNING undoes it), the first move to
  TERMINATING / TERMINATED / PREEMPTED / FAILED after becoming ready is the end
  of service, and reason `preempted` on that move marks a preemption;
- `decisions`: at, outcome, plan_status, plan["routes"]: the routing table each
  applied, usable plan published (an unusable plan keeps the previous table,
  as the tick does).

    inputs = inputs_from_store(cfg, "sqlite:///simulation.db", trace)
    verdict = judge(inputs)
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Mapping

from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from daemon.judge.inputs import (
    MARKET_NOTICE_S,
    JudgeInputError,
    JudgeInputs,
    ReplicaSpan,
    Requests,
    RoutingTable,
    ServiceSpec,
    notice_for,
)
from daemon.store.schema import Decision, Instance, InstanceEvent

# Plan statuses a caller acts on (daemon.domain.Plan.acceptable).
USABLE_PLANS = frozenset({"optimal", "feasible", "heuristic", "reused"})
_END_STATES = frozenset({"terminating", "terminated", "preempted", "failed"})


def _engine(source) -> Engine:
    if isinstance(source, Engine):
        return source
    if isinstance(source, str):
        url = make_url(source)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
                and not Path(url.database).exists():
            raise JudgeInputError(f"{source}: no such database (run a replay first: fleetctl simulate --db ...)")
        return create_engine(source)
    eng = getattr(source, "engine", None)  # daemon.store.repo.Store
    if isinstance(eng, Engine):
        return eng
    raise TypeError(f"expected a database URL, an SQLAlchemy Engine or a Store, got {type(source).__name__}")


@contextmanager
def _reading(source):
    try:
        yield
    except (OperationalError, ProgrammingError) as e:
        raise JudgeInputError(f"{source}: not a fleet store the judge can read ({e.orig})") from None


def _ts(dt) -> float | None:
    return None if dt is None else dt.timestamp()


def fleet_from_store(source, notice_s: Mapping[str, float] = MARKET_NOTICE_S) -> tuple[ReplicaSpan, ...]:
    """One ReplicaSpan per instance that ever became ready, in order of request."""
    eng = _engine(source)
    with _reading(source), Session(eng) as s:
        rows = s.execute(select(Instance.id, Instance.name, Instance.service, Instance.cloud, Instance.gpu,
                                Instance.gpu_count, Instance.market, Instance.ready_at, Instance.ended_at)
                         .order_by(Instance.requested_at, Instance.id)).all()
        evs = s.execute(select(InstanceEvent.instance_id, InstanceEvent.at, InstanceEvent.from_state,
                               InstanceEvent.to_state, InstanceEvent.reason)
                        .order_by(InstanceEvent.at, InstanceEvent.id)).all()
    by_inst = defaultdict(list)
    for iid, at, src, dst, reason in evs:
        by_inst[iid].append((at, src, dst, reason))
    out = []
    for iid, name, service, cloud, gpu, gpu_count, market, ready_at, ended_at in rows:
        if ready_at is None:
            continue  # never served
        ready = ready_at.timestamp()
        end = _ts(ended_at)
        preempted = False
        drains: list[float] = []
        windows: list[tuple[float, float]] = []
        for at, src, dst, reason in by_inst.get(iid, ()):
            t = at.timestamp()
            if t < ready:
                continue
            if dst == "draining":
                drains.append(t)
            elif src == "draining" and dst == "running" and drains:
                windows.append((drains.pop(), t))
            elif dst in _END_STATES:
                end = t if end is None else min(end, t)
                preempted = reason == "preempted"
                break
        drain_at = drains[-1] if drains else None
        notice = notice_for(cloud, notice_s) if preempted else 0.0
        out.append(ReplicaSpan(
            name=name, service=service, pool=f"{gpu}x{gpu_count}", gpu=gpu, gpu_count=int(gpu_count),
            market=market, cloud=cloud, ready_at=ready, end_at=end, drain_at=drain_at, preempted=preempted,
            notice_s=notice, out_of_routing=tuple(windows)))
    return tuple(out)


def routing_from_store(source) -> tuple[RoutingTable, ...]:
    """The routing tables in force over time: one per applied, usable decision whose routes changed."""
    eng = _engine(source)
    with _reading(source), Session(eng) as s:
        rows = s.execute(select(Decision.id, Decision.at, Decision.outcome, Decision.plan_status, Decision.plan)
                         .order_by(Decision.at, Decision.id)).all()
    out: list[RoutingTable] = []
    for did, at, outcome, status, plan in rows:
        if outcome != "applied" or status not in USABLE_PLANS or not isinstance(plan, dict):
            continue
        routes = plan.get("routes")
        if not isinstance(routes, list):
            raise JudgeInputError(f"decisions.id={did}: plan has no 'routes' list")
        try:
            table = RoutingTable.from_routes(at.timestamp(), routes)
        except JudgeInputError as e:
            raise JudgeInputError(f"decisions.id={did}: {e}") from None
        if out and out[-1].weights == table.weights:
            continue
        out.append(table)
    return tuple(out)


def services_from_config(cfg) -> dict[str, ServiceSpec]:
    return {svc.name: ServiceSpec.from_config(cfg, svc) for svc in cfg.services}


def requests_from_traces(cfg, traces) -> Requests:
    """A RequestTrace for the first service (a single-service replay), or {service: RequestTrace}."""
    if hasattr(traces, "input_tokens"):
        return Requests.from_trace(traces, cfg.services[0].name)
    parts = []
    for name, tr in traces.items():
        if name not in {s.name for s in cfg.services}:
            raise JudgeInputError(f"trace given for service {name!r}, which the config does not define")
        parts.append(Requests.from_trace(tr, name))
    return Requests.concat(parts)


def inputs_from_store(cfg, source, traces, notice_s: Mapping[str, float] = MARKET_NOTICE_S) -> JudgeInputs:
    """Everything the judge needs to judge the run recorded in `source` on `traces`."""
    return JudgeInputs(
        requests=traces if isinstance(traces, Requests) else requests_from_traces(cfg, traces),
        fleet=fleet_from_store(source, notice_s),
        routing=routing_from_store(source),
        grid=cfg.buckets.grid(),
        services=services_from_config(cfg),
    )
