"""Read models for operators: the fleet now, the last decision, recent events; and cost audits.

Only SQLAlchemy and the schema are imported here: `fleetctl status` must answer
in well under a second, so nothing heavy (pandas, pulp, sky) is pulled in.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daemon.store.schema import Alert, Decision, Instance, InstanceEvent

_BILLABLE = ("provisioning", "running", "draining", "terminating")
_LIVE = ("requested", "provisioning", "running", "draining", "terminating")
_NOTABLE = ("preempted", "launch_failed", "no_capacity", "quota", "drift", "orphan", "budget")


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def fleet_status(s: Session, events: int = 10) -> dict:
    rows = list(s.scalars(select(Instance).where(Instance.state.in_(_LIVE)).order_by(Instance.service, Instance.id)))
    instances = [{
        "id": r.id, "name": r.name, "service": r.service, "cloud": r.cloud, "region": r.region, "zone": r.zone,
        "instance_type": r.instance_type, "gpu": r.gpu, "gpu_count": r.gpu_count, "market": r.market,
        "price_per_hour": r.price_per_hour, "state": r.state, "launched_at": _iso(r.launched_at),
        "ready_at": _iso(r.ready_at), "endpoint": r.endpoint,
    } for r in rows]
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r.service, r.cloud, r.region, r.zone or "-", r.instance_type, r.gpu, r.market, r.state)
        g = groups.setdefault(key, {"service": r.service, "cloud": r.cloud, "region": r.region, "zone": r.zone,
                                    "instance_type": r.instance_type, "gpu": r.gpu, "market": r.market,
                                    "state": r.state, "count": 0, "cost_per_hour_usd": 0.0})
        g["count"] += 1
        if r.state in _BILLABLE:
            g["cost_per_hour_usd"] = round(g["cost_per_hour_usd"] + r.price_per_hour, 4)
    cost = sum(r.price_per_hour for r in rows if r.state in _BILLABLE)
    endpoints: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.state == "running" and r.endpoint:
            endpoints[f"{r.service}/{r.gpu}x{r.gpu_count}"].append(r.endpoint)
    d = s.scalars(select(Decision).order_by(Decision.id.desc()).limit(1)).first()
    last = None
    if d is not None:
        acts = Counter((a.get("kind"), a.get("reason")) for a in (d.actions or []))
        last = {
            "id": d.id, "at": _iso(d.at), "outcome": d.outcome, "plan_status": d.plan_status, "solver": d.solver,
            "forecast_rps": d.forecast_rps, "observed_rps": d.observed_rps,
            "planned_cost_per_hour_usd": d.planned_cost_per_hour, "launches": d.launches,
            "terminations": d.terminations, "error": d.error,
            "actions": [{"kind": k, "reason": r, "count": n} for (k, r), n in sorted(acts.items())],
            "targets": (d.plan or {}).get("targets", []), "notes": (d.plan or {}).get("notes", []),
            "forecast": {k: {"rate_rps": v.get("rate_rps"), "method": v.get("method")}
                         for k, v in (d.forecast or {}).items()},
        }
    ev_rows = s.execute(
        select(InstanceEvent, Instance).join(Instance, Instance.id == InstanceEvent.instance_id)
        .where(InstanceEvent.reason.in_(_NOTABLE)).order_by(InstanceEvent.at.desc(), InstanceEvent.id.desc())
        .limit(events)).all()
    recent = [{"at": _iso(e.at), "instance": i.name, "service": i.service, "from": e.from_state, "to": e.to_state,
               "reason": e.reason, "zone": "/".join([i.cloud, i.region, i.zone or "-"]), "market": i.market,
               "detail": e.detail} for e, i in ev_rows]
    alerts = [{"at": _iso(a.at), "severity": a.severity, "kind": a.kind, "message": a.message}
              for a in s.scalars(select(Alert).order_by(Alert.id.desc()).limit(5))]
    return {"instances": instances, "groups": list(groups.values()), "cost_per_hour_usd": round(cost, 4),
            "last_decision": last, "recent_events": recent, "alerts": alerts, "endpoints": dict(endpoints),
            "decisions": s.scalar(select(func.count()).select_from(Decision))}


def audit(s: Session, since: datetime | None = None, until: datetime | None = None,
          by: tuple[str, ...] = ("service", "gpu", "market")) -> dict:
    """Cost and instance-hours grouped by plain columns, from the price stored at launch.

    The window defaults to everything recorded; an instance still billing is
    counted up to `until` (default: the latest decision time, so a replay's
    virtual clock, not today's date, ends the window).
    """
    allowed = {"service", "cloud", "region", "zone", "gpu", "market", "instance_type"}
    bad = [b for b in by if b not in allowed]
    if bad:
        raise ValueError(f"cannot group by {bad}; allowed: {sorted(allowed)}")
    if until is None:
        until = s.scalar(select(func.max(Decision.at))) or datetime.now(timezone.utc)
    rows = list(s.scalars(select(Instance).where(Instance.launched_at.is_not(None))))
    groups: dict[tuple, dict] = {}
    total = 0.0
    for r in rows:
        a = max(r.launched_at, since) if since else r.launched_at
        b = min(r.ended_at or until, until)
        if b <= a:
            continue
        h = (b - a).total_seconds() / 3600.0
        key = tuple(getattr(r, k) or "-" for k in by)
        g = groups.setdefault(key, {**dict(zip(by, key)), "instances": 0, "instance_hours": 0.0, "cost_usd": 0.0})
        g["instances"] += 1
        g["instance_hours"] += h
        g["cost_usd"] += h * r.price_per_hour
        total += h * r.price_per_hour
    out_groups = sorted(({**g, "instance_hours": round(g["instance_hours"], 4), "cost_usd": round(g["cost_usd"], 4)}
                         for g in groups.values()), key=lambda g: -g["cost_usd"])
    q = select(InstanceEvent.reason, func.count()).group_by(InstanceEvent.reason)
    if since:
        q = q.where(InstanceEvent.at >= since)
    reasons = {r: n for r, n in s.execute(q)}
    pz = (select(Instance.cloud, Instance.region, Instance.zone, func.count())
          .join(InstanceEvent, InstanceEvent.instance_id == Instance.id)
          .where(InstanceEvent.reason == "preempted").group_by(Instance.cloud, Instance.region, Instance.zone))
    if since:
        pz = pz.where(InstanceEvent.at >= since)
    preemptions = [{"zone": "/".join([c, r, z or "-"]), "count": n} for c, r, z, n in s.execute(pz)]
    return {"since": _iso(since), "until": _iso(until), "group_by": list(by), "total_cost_usd": round(total, 4),
            "groups": out_groups, "events_by_reason": reasons, "preemptions_by_zone": preemptions}


def forecast_history(s: Session, cfg, service: str):
    """(history windows, recorded forecasts) of a service, for `fleetctl forecast show --service`.

    Raises LookupError when there is nothing to show.
    """
    from datetime import timedelta

    from daemon.domain import DemandForecast
    from daemon.store.repo import Store

    last = s.scalar(select(Decision.at).order_by(Decision.id.desc()).limit(1))
    if last is None:
        raise LookupError("no decision recorded yet: nothing to show")
    history = Store.demand_history(s, service, cfg.buckets.grid(), last - timedelta(seconds=cfg.loop.history_s))
    if not history:
        raise LookupError(f"no demand recorded for service {service!r}")
    forecasts = []
    for at, fc in s.execute(select(Decision.at, Decision.forecast).order_by(Decision.id.desc()).limit(500)):
        f = (fc or {}).get(service)
        if f:
            forecasts.append(DemandForecast(service, at, f["horizon_s"], f["rate_rps"],
                                            tuple(tuple(r) for r in f.get("mix", [])), f["method"],
                                            f.get("quantile", 0.5), f.get("details", {})))
    return history, list(reversed(forecasts))
