"""Read models for operators: the fleet now, who leads, the last decision, events; their text form.

Plain SQL over daemon/store/fastread.py (no SQLAlchemy import: `fleetctl status`
answers in well under half a second, most of it Python's own start). Cost audits
are in daemon/audit.py, the explanation of one decision in daemon/explain.py.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timezone

from daemon.store.fastread import Reader, bind_ts, js, ts

_BILLABLE = ("provisioning", "running", "draining", "terminating")
_LIVE = ("requested", "provisioning", "running", "draining", "terminating")
_NOTABLE = ("preempted", "launch_failed", "no_capacity", "quota", "drift", "orphan", "budget")
# A daemon not heard of for this long is not listed as running (it reports on every renewal).
DAEMON_STALE_S = 300.0


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join("?" for _ in values) + ")"


def where(cloud: str, region: str, zone: str | None) -> str:
    """aws/us-east-1a (the zone names its region), azure/westus3/1, lambda/us-east-1."""
    if zone and zone.startswith(region):
        return f"{cloud}/{zone}"
    return f"{cloud}/{region}" + (f"/{zone}" if zone and zone != "-" else "")


def leadership(r: Reader, now: datetime | None = None, lease_name: str = "fleetd") -> dict:
    """Who holds the lease, which daemons stand by, whether the fleet is paused (schema 0003+)."""
    now = now or datetime.now(timezone.utc)
    out: dict = {"leader": None, "daemons": [], "paused": None}
    if r.has_table("leases"):
        row = r.one("SELECT holder, token, acquired_at, renewed_at, expires_at FROM leases WHERE name = ?", lease_name)
        if row and row[0]:
            exp = ts(row[4])
            out["leader"] = {"holder": row[0], "token": row[1], "since": _iso(ts(row[2])), "renewed_at": _iso(ts(row[3])),
                             "expires_at": _iso(exp), "live": bool(exp and exp > now)}
    if r.has_table("daemons"):
        from datetime import timedelta

        for holder, host, pid, role, last_seen, detail in r.rows(
                "SELECT holder, hostname, pid, role, last_seen, detail FROM daemons WHERE last_seen >= ? "
                "AND role <> 'stopped' ORDER BY role, last_seen DESC",
                bind_ts(r, now - timedelta(seconds=DAEMON_STALE_S))):
            out["daemons"].append({"holder": holder, "hostname": host, "pid": pid, "role": role,
                                   "last_seen": _iso(ts(last_seen)), "detail": detail})
    if r.has_table("controls"):
        row = r.one("SELECT value, updated_at, updated_by, note FROM controls WHERE name = 'paused'")
        if row and row[0] == "true":
            out["paused"] = {"since": _iso(ts(row[1])), "by": row[2], "note": row[3]}
    return out


def fleet_status(r: Reader, events: int = 10, now: datetime | None = None) -> dict:
    rows = r.rows("SELECT id, name, service, cloud, region, zone, instance_type, gpu, gpu_count, market, price_per_hour, "
                  f"state, launched_at, ready_at, endpoint FROM instances WHERE state IN {_in(_LIVE)} "
                  "ORDER BY service, id", *_LIVE)
    keys = ("id", "name", "service", "cloud", "region", "zone", "instance_type", "gpu", "gpu_count", "market",
            "price_per_hour", "state", "launched_at", "ready_at", "endpoint")
    instances = []
    for row in rows:
        d = dict(zip(keys, row))
        d["launched_at"], d["ready_at"] = _iso(ts(d["launched_at"])), _iso(ts(d["ready_at"]))
        instances.append(d)
    groups: dict[tuple, dict] = {}
    for i in instances:
        key = (i["service"], i["cloud"], i["region"], i["zone"] or "-", i["instance_type"], i["gpu"], i["gpu_count"],
               i["market"], i["state"])
        g = groups.setdefault(key, {"service": i["service"], "cloud": i["cloud"], "region": i["region"],
                                    "zone": i["zone"], "instance_type": i["instance_type"], "gpu": i["gpu"],
                                    "gpu_count": i["gpu_count"], "market": i["market"], "state": i["state"],
                                    "count": 0, "cost_per_hour_usd": 0.0})
        g["count"] += 1
        if i["state"] in _BILLABLE:
            g["cost_per_hour_usd"] = round(g["cost_per_hour_usd"] + i["price_per_hour"], 4)
    cost = sum(i["price_per_hour"] for i in instances if i["state"] in _BILLABLE)
    endpoints: dict[str, list[str]] = defaultdict(list)
    for i in instances:
        if i["state"] == "running" and i["endpoint"]:
            endpoints[f"{i['service']}/{i['gpu']}x{i['gpu_count']}"].append(i["endpoint"])
    d = r.one("SELECT id, at, outcome, plan_status, solver, forecast_rps, observed_rps, planned_cost_per_hour, launches, "
              "terminations, error, actions, plan, forecast FROM decisions ORDER BY id DESC LIMIT 1")
    last = None
    if d is not None:
        actions, plan, forecast = js(d[11]) or [], js(d[12]) or {}, js(d[13]) or {}
        acts = Counter((a.get("kind"), a.get("reason")) for a in actions)
        last = {
            "id": d[0], "at": _iso(ts(d[1])), "outcome": d[2], "plan_status": d[3], "solver": d[4],
            "forecast_rps": d[5], "observed_rps": d[6], "planned_cost_per_hour_usd": d[7], "launches": d[8],
            "terminations": d[9], "error": d[10],
            "actions": [{"kind": k, "reason": rs, "count": n} for (k, rs), n in sorted(acts.items(), key=str)],
            "targets": plan.get("targets", []), "notes": plan.get("notes", []),
            "forecast": {k: {"rate_rps": v.get("rate_rps"), "method": v.get("method")} for k, v in forecast.items()},
        }
    recent = [{"at": _iso(ts(at)), "instance": name, "service": svc, "from": frm, "to": to, "reason": reason,
               "zone": "/".join([cloud, region, zone or "-"]), "where": where(cloud, region, zone), "market": market,
               "detail": detail}
              for at, name, svc, frm, to, reason, cloud, region, zone, market, detail in r.rows(
                  "SELECT e.at, i.name, i.service, e.from_state, e.to_state, e.reason, i.cloud, i.region, i.zone, "
                  "i.market, e.detail FROM instance_events e JOIN instances i ON i.id = e.instance_id "
                  f"WHERE e.reason IN {_in(_NOTABLE)} ORDER BY e.at DESC, e.id DESC LIMIT ?", *_NOTABLE, events)]
    alerts = [{"at": _iso(ts(at)), "severity": sev, "kind": kind, "message": msg}
              for at, sev, kind, msg in r.rows("SELECT at, severity, kind, message FROM alerts ORDER BY id DESC LIMIT 5")]
    n_decisions = r.one("SELECT count(*) FROM decisions")[0]
    return {"instances": instances, "groups": list(groups.values()), "cost_per_hour_usd": round(cost, 4),
            "last_decision": last, "recent_events": recent, "alerts": alerts, "endpoints": dict(endpoints),
            "decisions": n_decisions, **leadership(r, now)}


def list_events(r: Reader, since: datetime | None = None, until: datetime | None = None,
                reasons: tuple[str, ...] = (), instance: str | None = None, service: str | None = None,
                limit: int = 50) -> list[dict]:
    """Lifecycle events, oldest first; with `limit`, the latest `limit` of those that match."""
    cond, params = [], []
    if since is not None:
        cond.append("e.at >= ?")
        params.append(bind_ts(r, since))
    if until is not None:
        cond.append("e.at < ?")
        params.append(bind_ts(r, until))
    if reasons:
        cond.append(f"e.reason IN {_in(reasons)}")
        params += list(reasons)
    if instance:
        cond.append("(i.id = ? OR i.name = ?)")
        params += [instance, instance]
    if service:
        cond.append("i.service = ?")
        params.append(service)
    sql = ("SELECT e.id, e.at, i.id, i.name, i.service, e.from_state, e.to_state, e.reason, e.detail, e.decision_id, "
           "i.cloud, i.region, i.zone, i.gpu, i.gpu_count, i.market FROM instance_events e "
           "JOIN instances i ON i.id = e.instance_id" + (" WHERE " + " AND ".join(cond) if cond else "")
           + " ORDER BY e.at DESC, e.id DESC" + (" LIMIT ?" if limit else ""))
    if limit:
        params.append(limit)
    out = [{"id": eid, "at": _iso(ts(at)), "instance_id": iid, "instance": name, "service": svc, "from": frm,
            "to": to, "reason": reason, "detail": detail, "decision_id": did, "where": where(cloud, region, zone),
            "pool": f"{gpu}x{n}", "market": market}
           for eid, at, iid, name, svc, frm, to, reason, detail, did, cloud, region, zone, gpu, n, market
           in r.rows(sql, *params)]
    return list(reversed(out))
