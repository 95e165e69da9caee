"""How a comparison reads: the headline, a table per policy, and a Markdown row for the benchmark."""

from __future__ import annotations

from daemon.policies.compare import BASELINES, POLICIES


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def headline(doc: dict, subject: str = "ours") -> str:
    """One sentence: what this policy cost against the baselines, at what attainment."""
    pols = doc["policies"]
    me = pols.get(subject)
    if me is None:
        return ""
    parts = []
    for b in ("reactive", "spothedge", "static", "melange", "oracle"):
        if b in pols and b != subject and me["cost_ratio"].get(b) is not None:
            o = pols[b]
            att = "" if b == "oracle" else f" at {_fmt(o['slo_attainment'], '.2%')}"
            parts.append(f"{me['cost_ratio'][b]:.2f}x {b} (${o['cost_usd']:.2f}{att})")
    return (f"{subject}: ${me['cost_usd']:.2f} at {_fmt(me['slo_attainment'], '.2%')} request-level SLO attainment"
            + (" = " + ", ".join(parts) if parts else ""))


def pools_text(hours: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(hours.items(), key=lambda kv: -kv[1]) if v >= 0.05) or "-"


def rows(doc: dict) -> list[dict]:
    out = []
    for name in POLICIES:
        e = doc["policies"].get(name)
        if e is None:
            continue
        gpu = "/".join(sorted(set(e["gpu"].values()))) if e.get("gpu") else ""
        out.append({
            "policy": name, "gpu": gpu, "cost": e["cost_usd"],
            **{f"x{b}": e["cost_ratio"].get(b) for b in BASELINES},
            "attainment": e["slo_attainment"], "p99_ttft_s": e["p99_ttft_s"], "p99_tpot_ms": e["p99_tpot_ms"],
            "failed": e["failed_requests"], "launches": e.get("launches"), "preemptions": e.get("preemptions"),
            "hours": pools_text(e["instance_hours"]), "meets": e.get("meets_slo_target"),
        })
    return out


def print_comparison(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    if not c.is_terminal:
        c = Console(width=140)
    c.print(f"[bold]Comparison on[/bold] {doc['workload']}: {doc['requests']} requests over {doc['virtual_hours']} h; "
            f"simulated cloud seed {doc['simulated_cloud']['seed']}"
            + (f", spot traces {doc['simulated_cloud']['spot_traces']}" if doc['simulated_cloud']['spot_traces'] else "")
            + f"; judge: {doc['judge']}")
    t = Table(show_header=True, header_style="bold")
    for col, just in (("policy", "left"), ("GPU", "left"), ("cost $", "right"), ("x static", "right"),
                      ("x reactive", "right"), ("x spothedge", "right"), ("x melange", "right"), ("x oracle", "right"),
                      ("attainment", "right"), ("p99 TTFT s", "right"), ("p99 TPOT ms", "right"), ("failed", "right"),
                      ("launches", "right"), ("preempted", "right")):
        t.add_column(col, justify=just)
    table_rows = rows(doc)
    for r in table_rows:
        att = _fmt(r["attainment"], ".4f")
        if r["meets"] is False:
            att += "*"
        t.add_row(r["policy"], r["gpu"], f"{r['cost']:.2f}",
                  *[_fmt(r[f"x{b}"], ".2f") for b in BASELINES], att, _fmt(r["p99_ttft_s"], ".3g"),
                  _fmt(r["p99_tpot_ms"], ".3g"), str(r["failed"]), _fmt(r["launches"], "d"),
                  _fmt(r["preemptions"], "d"))
    c.print(t)
    c.print(f"* below the SLO target {doc['slo_target']:.1%} (a single-type baseline: no GPU type reached it)")
    c.print("instance-hours by pool:")
    for r in table_rows:
        c.print(f"  {r['policy']:17} {r['hours']}")
    line = headline(doc)
    if line:
        c.print(f"[bold]{line}[/bold]")
    c.print(f"wall time {doc['wall_s']} s, {doc['jobs']} process(es), {len(doc['runs'])} replays; ticks/s: "
            + ", ".join(f"{r['label']} {r['ticks_per_s']}" for r in doc["runs"]))


def markdown_header() -> str:
    cols = ["workload", "policy", "GPU", "cost $", "x reactive", "x spothedge", "x oracle", "attainment",
            "p99 TTFT s", "p99 TPOT ms", "failed", "launches", "preempt", "instance-hours by pool"]
    return "| " + " | ".join(cols) + " |\n|" + "|".join("---" for _ in cols) + "|"


def markdown_rows(label: str, doc: dict) -> list[str]:
    out = []
    for r in rows(doc):
        att = _fmt(r["attainment"], ".4f") + (" (below target)" if r["meets"] is False else "")
        out.append("| " + " | ".join([
            label, r["policy"], r["gpu"], f"{r['cost']:.2f}", _fmt(r["xreactive"], ".2f"), _fmt(r["xspothedge"], ".2f"),
            _fmt(r["xoracle"], ".2f"), att, _fmt(r["p99_ttft_s"], ".3g"), _fmt(r["p99_tpot_ms"], ".3g"),
            str(r["failed"]), _fmt(r["launches"], "d"), _fmt(r["preemptions"], "d"), r["hours"]]) + " |")
    return out
