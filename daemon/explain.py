"""`fleetctl decisions show ID`: one decision explained in words, from its `decisions` row.

A tick records what it saw (inputs), what it expected (forecast), what it wanted
(plan, with the limits that bound it), what it did (actions) and how it ended
(outcome, and the lifecycle events and alerts recorded under its id). This
module turns that row into sentences an operator can read at 3 a.m.
"""

from __future__ import annotations

from collections import Counter

from daemon.store.fastread import Reader, js, ts

_OUTCOME = {
    "applied": "applied: the intents were recorded, then the provider was called for each",
    "dry_run": "dry run: planned and recorded, the provider was not called (policy.dry_run)",
    "paused": "paused: planned and recorded, nothing was acted on (fleetctl pause or policy.paused)",
    "failed": "failed: the tick stopped with an error; nothing after the error was done",
    "interrupted": "interrupted: the process stopped before the tick finished; its intents were repaired by a "
                   "later tick",
    "started": "in progress (or the process died in this tick and has not restarted yet)",
    "standby": "standby: this daemon did not hold the leader lease",
}


class DecisionNotFound(LookupError):
    pass


def _fmt(x, nd: int = 2) -> str:
    if x is None:
        return "?"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def explain(r: Reader, decision_id: int) -> dict:
    row = r.one("SELECT id, at, outcome, plan_status, solver, solve_seconds, planned_cost_per_hour, "
                "fleet_cost_per_hour, forecast_rps, observed_rps, launches, terminations, error, inputs, forecast, "
                "plan, actions FROM decisions WHERE id = ?", decision_id)
    if row is None:
        last = r.one("SELECT max(id) FROM decisions")
        raise DecisionNotFound(f"no decision #{decision_id} (decisions go from 1 to {last[0] if last and last[0] else 0})")
    (did, at, outcome, status, solver, solve_s, planned, fleet_cost, f_rps, o_rps, launches, terms, error,
     inputs, forecast, plan, actions) = row
    at = ts(at)
    inputs, forecast, plan, actions = js(inputs) or {}, js(forecast) or {}, js(plan) or {}, js(actions) or []
    events = [{"at": ts(a).isoformat(), "instance": name, "from": f, "to": t, "reason": rs, "detail": det}
              for a, name, f, t, rs, det in r.rows(
                  "SELECT e.at, i.name, e.from_state, e.to_state, e.reason, e.detail FROM instance_events e "
                  "JOIN instances i ON i.id = e.instance_id WHERE e.decision_id = ? ORDER BY e.at, e.id", did)]
    alerts = [{"severity": sev, "kind": kind, "message": msg} for sev, kind, msg in r.rows(
        "SELECT severity, kind, message FROM alerts WHERE decision_id = ? ORDER BY id", did)]
    sections: list[tuple[str, list[str]]] = []

    # -- what it saw
    saw = []
    if inputs:
        fleet = inputs.get("fleet") or {}
        saw.append(f"{inputs.get('new_windows', 0)} new demand window(s); observed {_fmt(o_rps)} req/s in total.")
        saw.append("Fleet before acting: " + (", ".join(f"{n} {s}" for s, n in sorted(fleet.items())) or "empty") + ".")
        saw.append(f"{inputs.get('offerings', '?')} offerings" + (f", prices read at {inputs['prices_read_at']}"
                                                                  if inputs.get("prices_read_at") else "") + ".")
        unavailable = inputs.get("unavailable") or []
        saw.append(f"{len(unavailable)} spot market(s) in cooldown after a preemption or refusal"
                   + (": " + ", ".join(unavailable[:6]) + (" ..." if len(unavailable) > 6 else "") if unavailable else "")
                   + ".")
        synced = inputs.get("synced") or {}
        moved = synced.get("transitions") or {}
        if moved:
            saw.append("The provider's truth moved instances: " + ", ".join(f"{k} x{v}" for k, v in sorted(moved.items()))
                       + ".")
        if synced.get("orphans"):
            saw.append(f"Orphans at the provider (ours by name, unknown to the store): {', '.join(synced['orphans'])}.")
        saw.append(f"Mode: {inputs.get('mode', '?')}.")
    else:
        saw.append("The tick recorded no inputs (it failed before the plan).")
    sections.append(("Inputs", saw))

    # -- forecast
    fc = []
    for svc, f in sorted(forecast.items()):
        d = f.get("details") or {}
        line = (f"{svc}: {_fmt(f.get('rate_rps'))} req/s expected over the next {_fmt(f.get('horizon_s'), 0)} s, "
                f"at the {_fmt(f.get('quantile'))} quantile ({f.get('method', '?')})")
        if d.get("recent_peak_rps") is not None:
            line += f"; recent peak {_fmt(d['recent_peak_rps'])} req/s"
        if d.get("held_at_recent_peak"):
            line += "; held at the recent peak (scale down slowly)"
        if d.get("burst_factor") is not None:
            line += (f"; bursts inside a window need {_fmt(d['burst_factor'])}x the mean rate "
                     f"(the plan carries the larger of that and 1 + headroom)")
        mix = f.get("mix") or []
        cells = [(v, i, j) for i, rw in enumerate(mix) for j, v in enumerate(rw) if v]
        if cells:
            v, i, j = max(cells)
            line += f"; busiest size cell: input bucket {i}, output bucket {j} ({v:.0%} of requests)"
        fc.append(line + ".")
    sections.append(("Forecast", fc or ["No forecast recorded."]))

    # -- plan
    pl = []
    if plan:
        st = plan.get("status", status)
        if st == "reused":
            pl.append(f"Reused the last plan (demand, fleet and markets within the replan band): ${_fmt(planned)}/h.")
        else:
            pl.append(f"Status {st} by {plan.get('solver', solver)} in {_fmt(plan.get('solve_seconds', solve_s), 3)} s"
                      + (f" (gap {plan['gap']:.3g})" if plan.get("gap") is not None else "")
                      + f": ${_fmt(planned)}/h.")
        targets = plan.get("targets") or []
        if targets:
            pl.append("Wanted: " + "; ".join(f"{t['service']}: {t['count']} x {t['offering']}" for t in targets) + ".")
        routes = plan.get("routes") or []
        if routes:
            by_bucket: dict = {}
            for rt in routes:
                by_bucket.setdefault((rt["service"], rt["input_bucket"]), []).append(f"{rt['pool']} {rt['weight']:.0%}")
            pl.append("Routing: " + "; ".join(f"{s} input bucket {b} -> {', '.join(v)}"
                                              for (s, b), v in sorted(by_bucket.items(), key=str)) + ".")
        util = plan.get("utilization") or {}
        if util:
            pl.append("Expected load/capacity: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(util.items())) + ".")
        unserved = plan.get("unserved_rps") or {}
        if any(v > 0 for v in unserved.values()):
            pl.append("Unserved: " + ", ".join(f"{k} {v:.2f} req/s" for k, v in unserved.items() if v > 0) + ".")
        for n in plan.get("notes") or []:
            pl.append(f"Note: {n}.")
    else:
        pl.append("No plan recorded.")
    sections.append(("Plan", pl))

    # -- binding limits
    lim = []
    binding = plan.get("binding") or []
    lim.append("Bound by: " + ", ".join(binding) + "." if binding else "No limit bound the plan (budget, quotas, "
                                                                          "minimum replicas were slack).")
    for key, words in (("skipped_for_budget", "launch(es) not made: they would have exceeded the budget cap"),
                       ("skipped_for_limits", "change(s) held back by the per-tick launch/termination limits"),
                       ("held_for_make_before_break", "drain(s) held until replacements run (make before break)")):
        if inputs.get(key):
            lim.append(f"{inputs[key]} {words}.")
    sections.append(("Limits", lim))

    # -- actions
    act = []
    counts = Counter((a.get("kind"), a.get("service"), a.get("offering"), a.get("reason")) for a in actions)
    for (kind, svc, off, reason), n in sorted(counts.items(), key=str):
        who = [a.get("instance") for a in actions if (a.get("kind"), a.get("service"), a.get("offering"),
                                                       a.get("reason")) == (kind, svc, off, reason) and a.get("instance")]
        act.append(f"{kind} {n} x {svc} on {off} ({reason})" + (f": {', '.join(who)}" if who else "") + ".")
    sections.append(("Actions", act or ["None: the fleet already matched the plan."]))

    # -- outcome
    out = [_OUTCOME.get(outcome, outcome) + "."]
    out.append(f"{launches} launch(es) accepted by the provider, {terms} termination(s) requested; the billable "
               f"fleet costs ${_fmt(fleet_cost)}/h afterwards.")
    if error:
        out.append(f"Error: {error}")
    for e in events:
        out.append(f"{e['at'][11:19]} {e['instance']}: {e['from'] or 'new'} -> {e['to']} ({e['reason']})"
                   + (f": {e['detail']}" if e["detail"] else ""))
    for a in alerts:
        out.append(f"alert {a['severity']} {a['kind']}: {a['message']}")
    sections.append(("Outcome", out))
    return {"id": did, "at": at.isoformat(), "outcome": outcome, "sections": [{"title": t, "lines": ls}
                                                                              for t, ls in sections],
            "events": events, "alerts": alerts}


def render(doc: dict, width: int) -> str:
    import textwrap

    out = [f"Decision #{doc['id']} at {doc['at'][:19].replace('T', ' ')} UTC"]
    for sec in doc["sections"]:
        out.append("")
        out.append(sec["title"])
        for line in sec["lines"]:
            out.append(textwrap.fill(line, width=width, initial_indent="  ", subsequent_indent="      ",
                                     break_long_words=False, break_on_hyphens=False))
    return "\n".join(out)
