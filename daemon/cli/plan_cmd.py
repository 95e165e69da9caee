"""`fleetctl plan`: compute a plan now without acting (dry run), or solve a Mélange input file.

- `fleetctl plan --melange FILE.json [--json]` runs our planner on Mélange's input
  format and prints one JSON object: a count per GPU name, "cost" ($/h) and
  "solve_seconds" (Mélange's output shape, so its users can compare directly).
- `fleetctl plan [--config FILE] [--db URL] [--json]` plans from the store's state
  and forecast and shows the diff against the current fleet and the cost delta.
  Building PlanInputs from the store is the loop's job: it registers a loader
  with `set_inputs_loader`; `plan_diff`/`render_diff` do the rest.

Heavy imports (pulp) stay inside functions: `fleetctl status` must start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from daemon.cli.common import fail as _fail
from daemon.cli.common import db_errors, open_existing

if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.domain import Plan
    from daemon.plan.inputs import PlanInputs

app = typer.Typer(help="Compute a plan now without acting (dry run); or solve a Mélange input file.")

def plan_diff(inputs: "PlanInputs", plan: "Plan") -> dict:
    """The plan against the current fleet: rows per (service, offering), costs and the delta."""
    current: dict[tuple[str, str], int] = {}
    prices: dict[str, float] = {}
    offers = {}
    for inst in inputs.fleet:
        k = (inst.service, inst.offering.key)
        current[k] = current.get(k, 0) + 1
        offers.setdefault(inst.offering.key, inst.offering)
    offers.update(plan.offerings)
    for key, o in offers.items():
        prices[key] = o.price_per_hour
    rows = []
    for service, key in sorted(set(current) | set(plan.targets)):
        cur = current.get((service, key), 0)
        tgt = plan.targets.get((service, key), cur if not plan.acceptable else 0)
        if cur == 0 and tgt == 0:
            continue
        o = offers[key]
        rows.append({
            "service": service, "offering": key, "gpu": o.pool, "market": str(o.market),
            "price_per_hour": o.price_per_hour, "current": cur, "target": tgt, "delta": tgt - cur,
        })
    cost_now = sum(inst.offering.price_per_hour for inst in inputs.fleet)
    cost_plan = plan.cost_per_hour
    return {
        "status": plan.status,
        "acceptable": plan.acceptable,
        "solver": plan.solver,
        "solve_seconds": plan.solve_seconds,
        "gap": plan.gap,
        "rows": rows,
        "launches": sum(max(0, r["delta"]) for r in rows),
        "terminations": sum(max(0, -r["delta"]) for r in rows),
        "cost_per_hour_current": round(cost_now, 4),
        "cost_per_hour_planned": round(cost_plan, 4),
        "cost_per_hour_delta": round(cost_plan - cost_now, 4),
        "binding": list(plan.binding),
        "unserved_rps": dict(plan.unserved_rps),
        "utilization": dict(plan.utilization),
        "routes": [
            {"service": r.service, "input_bucket": r.input_bucket, "output_bucket": r.output_bucket,
             "pool": r.pool, "weight": round(r.weight, 4)}
            for r in plan.routes
        ],
        "notes": list(plan.notes),
    }


def render_diff(diff: dict) -> str:
    """Plain-text table of a `plan_diff` for operators."""
    lines = [
        f"plan: {diff['status']} ({diff['solver']}, {diff['solve_seconds']:.3f}s"
        + (f", gap {diff['gap']:.4g}" if diff.get("gap") is not None else "") + ")"
    ]
    if not diff["acceptable"]:
        lines.append("  not acceptable: the loop keeps the current fleet")
    head = ("service", "offering", "gpu", "market", "$/h", "now", "plan", "delta")
    table = [head] + [
        (r["service"], r["offering"], r["gpu"], r["market"], f"{r['price_per_hour']:.3f}",
         str(r["current"]), str(r["target"]), f"{r['delta']:+d}" if r["delta"] else "0")
        for r in diff["rows"]
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    for row in table:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lines.append(
        f"cost/h: now {diff['cost_per_hour_current']:.2f} -> plan {diff['cost_per_hour_planned']:.2f} "
        f"({diff['cost_per_hour_delta']:+.2f}); launches {diff['launches']}, terminations {diff['terminations']}"
    )
    if diff["binding"]:
        lines.append("binding: " + ", ".join(diff["binding"]))
    if diff["unserved_rps"]:
        lines.append("unserved: " + ", ".join(f"{s} {v:.3g} req/s" for s, v in diff["unserved_rps"].items()))
    if diff["utilization"]:
        lines.append("utilization: " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(diff["utilization"].items())))
    for note in diff["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def dry_run(inputs: "PlanInputs", solver_cfg=None) -> tuple["Plan", dict]:
    """Plan from already-built inputs with the daemon's planner and diff it against their fleet; never acts."""
    from daemon.plan import plan as make_plan

    plan = make_plan(inputs, solver_cfg)
    return plan, plan_diff(inputs, plan)


@app.callback(invoke_without_command=True)
def plan(
    melange: Optional[Path] = typer.Option(None, "--melange", help="Solve a Mélange input file (JSON) instead."),
    config: Optional[Path] = typer.Option(None, "--config", help="Config TOML (default: built-in)."),
    db: Optional[str] = typer.Option(None, "--db", help="Store URL (default: from config)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    continuous: bool = typer.Option(
        False, "--continuous", help="With --melange: continuous routing shares instead of Mélange's slices."
    ),
    solver: Optional[str] = typer.Option(None, "--solver", help="cbc or highs (default: config)."),
) -> None:
    from daemon.config import ConfigError, SolverConfig, load_config

    if solver not in (None, "cbc", "highs", "greedy"):
        _fail(f"--solver must be cbc, highs or greedy, got {solver!r}")
    if melange is not None:
        from daemon.plan.melange import MelangeInputError, load_melange, solve_with_planner

        try:
            problem = load_melange(melange)
        except MelangeInputError as e:
            _fail(str(e))
        cfg = SolverConfig(backend=solver or "cbc")
        result, plan_ = solve_with_planner(problem, cfg, continuous=continuous)
        if not plan_.acceptable:
            _fail(f"{melange}: no plan: {plan_.status}: {'; '.join(plan_.notes)}", 1)
        if plan_.unserved_rps:
            _fail(f"{melange}: infeasible: some buckets have demand no GPU type can serve "
                  f"({', '.join(plan_.binding)})", 1)
        typer.echo(json.dumps(result.as_json()))
        return

    try:
        cfg_all = load_config(config)
    except ConfigError as e:
        _fail(str(e))
    from daemon.loop.tick import plan_inputs_now
    from daemon.wiring import build_system, wall_clock

    url = db or cfg_all.store.url
    store = open_existing(url)  # a clear error for a missing or unmigrated store
    # The provider is asked for offerings only; demand comes from the store, so no source is built.
    system = build_system(cfg_all, store=store, sources={}, gateway=False)
    with db_errors(url):
        inputs = plan_inputs_now(system.loop(), wall_clock())
    solver_cfg = cfg_all.solver if solver is None else cfg_all.solver.model_copy(update={"backend": solver})
    _, diff = dry_run(inputs, solver_cfg)
    if as_json:
        typer.echo(json.dumps(diff, indent=2))
    else:
        typer.echo(render_diff(diff))
    if not diff["acceptable"]:
        raise typer.Exit(1)


def main() -> None:  # for `python -m daemon.cli.plan_cmd`
    app()


if __name__ == "__main__":
    sys.exit(main())
