"""How `fleetctl status` and `fleetctl events` print: plain text that fits the terminal's width."""

from __future__ import annotations

import textwrap

from daemon.cli.table import render
from daemon.status import where


def _short_time(iso: str) -> str:
    return iso[:19].replace("T", " ")


# The reason an edge usually has: not repeated in the event column (the JSON output keeps it).
_USUAL_REASON = {(None, "requested"): "launch_requested", ("requested", "provisioning"): "launch_accepted",
                 ("provisioning", "running"): "became_ready", ("draining", "terminating"): "drain_complete",
                 ("terminating", "terminated"): "terminate_confirmed"}


def _event_text(e: dict) -> str:
    change = f"{e['from'] or 'new'}->{e['to']}"
    usual = _USUAL_REASON.get((e["from"], e["to"]))
    return change if e["reason"] in (e["to"], usual) else f"{change} {e['reason']}"


def render_status(st: dict, width: int) -> str:
    def para(text: str, indent: str = "") -> str:
        return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent + "    ",
                             break_long_words=False, break_on_hyphens=False)

    out = []
    head = f"Fleet: {len(st['instances'])} instance(s), ${st['cost_per_hour_usd']:.2f}/h now"
    out.append(para(head))
    if st.get("paused"):
        p = st["paused"]
        out.append(para(f"PAUSED since {_short_time(p['since'])} by {p['by'] or '?'}"
                        + (f": {p['note']}" if p.get("note") else "") + " (fleetctl resume)"))
    lead = st.get("leader")
    if lead:
        state = "lease live" if lead["live"] else "lease EXPIRED"
        out.append(para(f"Leader: {lead['holder']} (token {lead['token']}, {state} until "
                        f"{_short_time(lead['expires_at'])})"))
    standby = [d for d in st.get("daemons", []) if d["role"] == "standby"]
    for d in standby:
        out.append(para(f"Standby: {d['holder']} (seen {_short_time(d['last_seen'])})"))
    if st["groups"]:
        rows = [[g["service"], f"{g['gpu']}x{g['gpu_count']}", g["market"], g["state"], str(g["count"]),
                 f"{g['cost_per_hour_usd']:.2f}", f"{where(g['cloud'], g['region'], g['zone'])} {g['instance_type']}"]
                for g in st["groups"]]
        out.append("")
        out.append(render(["SERVICE", "POOL", "MARKET", "STATE", "N", "$/H", "WHERE, TYPE"], rows, width,
                          right={4, 5}, split=1))
    d = st["last_decision"]
    out.append("")
    if d:
        out.append(para(f"Last decision #{d['id']} at {_short_time(d['at'])}: {d['outcome']}, plan {d['plan_status']} "
                        f"({d['solver']}), planned ${d['planned_cost_per_hour_usd'] or 0:.2f}/h"))
        for svc, f in d["forecast"].items():
            out.append(para(f"forecast {svc}: {f['rate_rps']} req/s ({f['method']})", "  "))
        for a in d["actions"]:
            out.append(para(f"{a['kind']} x{a['count']} ({a['reason']})", "  "))
        for n in d["notes"]:
            out.append(para(f"note: {n}", "  "))
        if d["error"]:
            out.append(para(f"error: {d['error']}", "  "))
        out.append(para(f"(fleetctl decisions show {d['id']} explains it)", "  "))
    else:
        out.append("No decision recorded yet.")
    if st["recent_events"]:
        out.append("")
        out.append("Recent events")
        rows = [[_short_time(e["at"])[5:16], e["instance"], _event_text(e), f"{e['where']} {e['market']}"]
                for e in st["recent_events"]]
        out.append(render(["AT", "INSTANCE", "EVENT", "WHERE"], rows, width))
    for a in st["alerts"]:
        out.append(para(f"alert {_short_time(a['at'])} {a['severity']} {a['kind']}: {a['message']}"))
    return "\n".join(out)


def render_events(events: list[dict], width: int) -> str:
    rows = [[_short_time(e["at"]), e["instance"], _event_text(e),
             f"{e['pool']} {e['market']} {e['where']}" + (f" decision {e['decision_id']}" if e["decision_id"] else "")
             + (f": {e['detail']}" if e["detail"] else "")] for e in events]
    return render(["AT", "INSTANCE", "EVENT", "POOL, WHERE, DETAIL"], rows, width)
