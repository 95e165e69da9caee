"""fleetctl: the operator's command line.

Heavy libraries are imported inside the commands that need them, so that
`fleetctl status` answers in well under a second.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Operate the GPU fleet autoscaler: simulate, inspect, audit.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")


def _forecast_history(service: str):
    """(history windows, recorded forecasts) of a service, for `fleetctl forecast show --service`."""
    from sqlalchemy import select

    from daemon.config import load_config
    from daemon.domain import DemandForecast
    from daemon.store.repo import Store
    from daemon.store.schema import Decision

    cfg = load_config(os.environ.get("FLEET_CONFIG") or None)
    store = _open_existing(os.environ.get("FLEET_DB", cfg.store.url))
    grid = cfg.buckets.grid()
    with store.session() as s:
        last = s.scalar(select(Decision.at).order_by(Decision.id.desc()).limit(1))
        if last is None:
            _fail("no decision recorded yet: nothing to show")
        from datetime import timedelta

        history = Store.demand_history(s, service, grid, last - timedelta(seconds=cfg.loop.history_s))
        forecasts = []
        for at, fc in s.execute(select(Decision.at, Decision.forecast).order_by(Decision.id.desc()).limit(500)):
            f = (fc or {}).get(service)
            if f:
                forecasts.append(DemandForecast(service, at, f["horizon_s"], f["rate_rps"],
                                                tuple(tuple(r) for r in f.get("mix", [])), f["method"],
                                                f.get("quantile", 0.5), f.get("details", {})))
    if not history:
        _fail(f"no demand recorded for service {service!r}")
    return history, list(reversed(forecasts))


def _register_subcommands() -> None:
    """Command groups that live in their own modules (each imports its heavy libraries lazily)."""
    from daemon.cli.profile_cmd import app as profile_app

    from daemon.cli import forecast_cmd
    from daemon.cli.offerings_cmd import app as offerings_app
    from daemon.cli.plan_cmd import app as plan_app

    forecast_cmd.STORE_LOADER = _forecast_history
    app.add_typer(forecast_cmd.app, name="forecast")

    app.add_typer(profile_app, name="profile")
    app.add_typer(plan_app, name="plan")
    app.add_typer(offerings_app, name="offerings")
    app.add_typer(__import__("daemon.cli.gateway_cmd", fromlist=["app"]).app, name="gateway")


_register_subcommands()

DEFAULT_SIM_DB = "sqlite:///simulation.db"


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _load_config(path: Optional[Path]):
    from daemon.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        _fail(str(e))


def _db_url(db: Optional[str], config: Optional[Path]) -> str:
    if db:
        return db
    if config is not None:
        return _load_config(config).store.url
    return os.environ.get("FLEET_DB", "sqlite:///fleet.db")


def _open_existing(url: str):
    """Open a database for reading; refuse clearly when it is missing or not migrated."""
    from sqlalchemy.engine import make_url

    from daemon.store.migrate import current_revision
    from daemon.store.repo import Store

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" and not Path(u.database).exists():
        _fail(f"no database at {u.database} (run `fleetctl simulate` or start fleetd first, or pass --db)")
    store = Store.open(url)
    if current_revision(store.engine) is None:
        _fail(f"{url}: no fleet schema in this database (run `fleetctl db upgrade --db {url}`)")
    return store


@config_app.command("check")
def config_check(file: Path = typer.Argument(..., help="TOML configuration file")) -> None:
    """Validate a configuration file; errors name the key path and the allowed values."""
    cfg = _load_config(file)
    typer.echo(f"{file}: ok ({len(cfg.services)} service(s), provider {cfg.provider.kind}, store {cfg.store.url})")


@db_app.command("upgrade")
def db_upgrade(db: Optional[str] = typer.Option(None, help="database URL"),
               config: Optional[Path] = typer.Option(None, help="config file (for store.url)")) -> None:
    """Create or migrate the schema to the newest version."""
    from daemon.store.migrate import upgrade
    from daemon.store.repo import Store

    url = _db_url(db, config)
    before, after = upgrade(Store.open(url).engine)
    typer.echo(f"{url}: {before or 'empty'} -> {after}")


@db_app.command("current")
def db_current(db: Optional[str] = typer.Option(None), config: Optional[Path] = typer.Option(None)) -> None:
    """Show the schema version of a database and the version this program needs."""
    from daemon.store.migrate import current_revision, head_revision
    from daemon.store.repo import Store

    url = _db_url(db, config)
    typer.echo(f"{url}: at {current_revision(Store.open(url).engine) or 'nothing'}, head {head_revision()}")


@app.command()
def simulate(
    trace: Optional[Path] = typer.Option(None, help="request log to replay (Azure CSV, JSONL, CSV; .xz/.gz ok)"),
    demo: bool = typer.Option(False, "--demo", help="the built-in seeded workload (default without --trace)"),
    config: Optional[Path] = typer.Option(None, help="config file (default: built-in, = config.example.toml)"),
    db: Optional[str] = typer.Option(None, help=f"database URL (default: a fresh {DEFAULT_SIM_DB})"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    warmup_s: Optional[float] = typer.Option(None, help="seconds of warm start before the workload"),
    spot_traces: Optional[Path] = typer.Option(None, help="replay spot availability traces from this directory "
                                               "(e.g. ../shared/data/spot/skyserve/AWS3) instead of the zone hazard"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every tick (JSON lines on stderr)"),
) -> None:
    """Replay a workload through the real control loop in virtual time against the simulated cloud."""
    from daemon.logging import configure_logging

    configure_logging("info" if verbose else "error", json=True)
    if trace is not None and demo:
        _fail("give either --trace or --demo, not both")
    cfg = _load_config(config)
    if spot_traces is not None:
        if not spot_traces.is_dir():
            _fail(f"--spot-traces {spot_traces}: not a directory")
        sim = cfg.provider.simulated.model_copy(update={"spot_trace_dir": str(spot_traces)})
        cfg = cfg.model_copy(update={"provider": cfg.provider.model_copy(update={"simulated": sim})})
    if cfg.provider.kind != "simulated":
        typer.echo(f"note: provider.kind = {cfg.provider.kind} in the config; a replay always uses the simulated "
                   "provider with [provider.simulated]", err=True)
    url = db or DEFAULT_SIM_DB
    if db is None:
        path = Path(url.removeprefix("sqlite:///"))
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if p.exists():
                p.unlink()
    from daemon.demand.traces import TraceError
    from daemon.simulate import simulate as run_sim
    from daemon.simulate import workload_for

    try:
        workload = workload_for(cfg, str(trace) if trace else None)
    except TraceError as e:
        _fail(str(e))
    for msg in workload.bad_rows[:20]:
        typer.echo(f"warning: skipped malformed row: {msg}", err=True)
    if len(workload.bad_rows) > 20:
        typer.echo(f"warning: ... {len(workload.bad_rows) - 20} more malformed rows skipped", err=True)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    err_console = Console(stderr=True)
    with Progress(TextColumn("[bold]simulate"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[at]}"), TimeElapsedColumn(), console=err_console,
                  disable=not err_console.is_terminal) as prog:
        task = prog.add_task("sim", total=1.0, at="")
        last_print = [0.0]

        def on_progress(frac: float, info: dict) -> None:
            prog.update(task, completed=frac, at=info["at"][:16])
            if not err_console.is_terminal and frac - last_print[0] >= 0.1:
                last_print[0] = frac
                print(f"simulate: {frac:4.0%} virtual time {info['at'][:16]}", file=sys.stderr, flush=True)

        try:
            summary = run_sim(cfg, workload, url, warmup_s=warmup_s, progress=on_progress).as_dict()
        except ValueError as e:
            _fail(str(e))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(f"[bold]Replay of[/bold] {summary['workload']}: {summary['requests']} requests over "
            f"{summary['virtual_hours']} h ({summary['virtual_start'][:19]} .. {summary['virtual_end'][:19]} UTC)")
    t = Table(show_header=True, header_style="bold")
    t.add_column("pool / market")
    t.add_column("instance-hours", justify="right")
    for k, v in summary["instance_hours"].items():
        t.add_row(k, f"{v:.2f}")
    c.print(t)
    c.print(f"total cost          ${summary['total_cost_usd']:.2f}")
    c.print(f"SLO attainment      {summary['slo_attainment']:.2%} of requests (worst window "
            f"{summary['slo_attainment_worst_window']:.0%}; capacity-based)")
    c.print(f"launches            {summary['launches']}    preemptions {summary['preemptions']}    "
            f"failures {summary['failures']}    decisions {summary['decisions']}")
    c.print(f"wall time           {summary['wall_seconds']} s    database {summary['db']}")
    for pool, src in summary.get("capacity_sources", {}).items():
        c.print(f"capacity {pool}: {src.split(' (')[0]}")
    c.print(f"next: fleetctl status --db {summary['db']}   |   fleetctl audit --db {summary['db']}")


@app.command()
def status(db: Optional[str] = typer.Option(None, help="database URL (default: FLEET_DB or sqlite:///fleet.db)"),
           config: Optional[Path] = typer.Option(None, help="config file (for store.url)"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """The fleet now: instances by offering and state, $/h, the last decision, recent events."""
    from daemon.status import fleet_status

    store = _open_existing(_db_url(db, config))
    with store.session() as s:
        st = fleet_status(s)
    if as_json:
        typer.echo(json.dumps(st))
        return
    _print_status(st)


def _print_status(st: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"Fleet: {len(st['instances'])} instance(s), ${st['cost_per_hour_usd']:.2f}/h now",
              header_style="bold")
    for col in ("service", "cloud", "region", "zone", "type", "gpu", "market", "state", "n", "$/h"):
        t.add_column(col, justify="right" if col in ("n", "$/h") else "left")
    for g in st["groups"]:
        t.add_row(g["service"], g["cloud"], g["region"], g["zone"] or "-", g["instance_type"], g["gpu"],
                  g["market"], g["state"], str(g["count"]), f"{g['cost_per_hour_usd']:.2f}")
    c.print(t)
    d = st["last_decision"]
    if d:
        c.print(f"[bold]Last decision[/bold] #{d['id']} at {d['at']}: {d['outcome']}, plan {d['plan_status']} "
                f"({d['solver']}), planned ${d['planned_cost_per_hour_usd'] or 0:.2f}/h")
        for svc, f in d["forecast"].items():
            c.print(f"  forecast {svc}: {f['rate_rps']} req/s ({f['method']})")
        for a in d["actions"]:
            c.print(f"  {a['kind']} x{a['count']} ({a['reason']})")
        for n in d["notes"]:
            c.print(f"  note: {n}")
        if d["error"]:
            c.print(f"  [red]error:[/red] {d['error']}")
    else:
        c.print("No decision recorded yet.")
    if st["recent_events"]:
        t = Table(title="Recent events", header_style="bold")
        for col in ("at", "instance", "zone", "market", "from -> to", "reason"):
            t.add_column(col)
        for e in st["recent_events"]:
            t.add_row(e["at"][:19], e["instance"], e["zone"], e["market"], f"{e['from']} -> {e['to']}", e["reason"])
        c.print(t)
    for a in st["alerts"]:
        c.print(f"[yellow]alert[/yellow] {a['at'][:19]} {a['severity']} {a['kind']}: {a['message']}")


@app.command()
def audit(db: Optional[str] = typer.Option(None), config: Optional[Path] = typer.Option(None),
          since: Optional[datetime] = typer.Option(None, help="start of the window (ISO 8601, UTC)"),
          until: Optional[datetime] = typer.Option(None, help="end of the window (ISO 8601, UTC)"),
          by: str = typer.Option("service,gpu,market", help="comma-separated: service,cloud,region,zone,gpu,market,instance_type"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Cost questions afterwards: spend and instance-hours grouped by plain columns, events by reason."""
    from daemon.status import audit as run_audit

    def utc(d):
        return d.replace(tzinfo=timezone.utc) if d and d.tzinfo is None else d

    store = _open_existing(_db_url(db, config))
    with store.session() as s:
        try:
            rep = run_audit(s, utc(since), utc(until), tuple(x.strip() for x in by.split(",") if x.strip()))
        except ValueError as e:
            _fail(str(e))
    if as_json:
        typer.echo(json.dumps(rep))
        return
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"Cost ${rep['total_cost_usd']:.2f} ({rep['since'] or 'start'} .. {rep['until']})",
              header_style="bold")
    for col in rep["group_by"] + ["instances", "instance-hours", "cost $"]:
        t.add_column(col)
    for g in rep["groups"]:
        t.add_row(*[str(g[k]) for k in rep["group_by"]], str(g["instances"]), f"{g['instance_hours']:.2f}",
                  f"{g['cost_usd']:.2f}")
    c.print(t)
    c.print("events by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(rep["events_by_reason"].items())))
    if rep["preemptions_by_zone"]:
        c.print("preemptions by zone: " + ", ".join(f"{p['zone']} {p['count']}" for p in rep["preemptions_by_zone"]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
