"""fleetctl: the operator's command line.

Heavy libraries are imported inside the commands that need them, so that
`fleetctl status` answers in well under a second.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
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


def _register_subcommands() -> None:
    """Command groups that live in their own modules (each imports its heavy libraries lazily)."""
    from daemon.cli.profile_cmd import app as profile_app

    from daemon.cli import forecast_cmd
    from daemon.cli.offerings_cmd import app as offerings_app
    from daemon.cli.plan_cmd import app as plan_app

    app.add_typer(forecast_cmd.app, name="forecast")

    app.add_typer(profile_app, name="profile")
    app.add_typer(plan_app, name="plan")
    app.add_typer(offerings_app, name="offerings")
    app.add_typer(__import__("daemon.cli.gateway_cmd", fromlist=["app"]).app, name="gateway")


_register_subcommands()

DEFAULT_SIM_DB = "sqlite:///simulation.db"


from daemon.cli.common import db_errors as _db_errors  # noqa: E402
from daemon.cli.common import db_url as _db_url  # noqa: E402
from daemon.cli.common import fail as _fail  # noqa: E402
from daemon.cli.common import load_config_or_fail as _load_config  # noqa: E402
from daemon.cli.common import mask_url  # noqa: E402
from daemon.cli.common import open_existing as _open_existing  # noqa: E402


@config_app.command("check")
def config_check(file: Path = typer.Argument(..., help="TOML configuration file"),
                 connect: bool = typer.Option(False, "--connect", help="also connect to the database server (and "
                                              "a Prometheus feed, the SkyPilot catalog)")) -> None:
    """Validate a configuration file and what it points at (store, files, capacity of every service):
    what fleetd checks before it starts. Errors name the file, the key path and what is allowed."""
    from daemon.logging import configure_logging
    from daemon.preflight import check, errors

    configure_logging("error")  # the capacity estimator's notes are not problems of the file
    cfg = _load_config(file)
    problems = check(cfg, str(file), connect=connect)
    for p in problems:
        typer.echo(f"{'error' if p.level == 'error' else 'warning'}: {p.line(str(file))}", err=True)
    bad = errors(problems)
    if bad:
        raise typer.Exit(2)
    typer.echo(f"{file}: ok ({len(cfg.services)} service(s), provider {cfg.provider.kind}, "
               f"store {mask_url(cfg.store.url)}{', connected' if connect else ''})")


@db_app.command("upgrade")
def db_upgrade(db: Optional[str] = typer.Option(None, help="database URL"),
               config: Optional[Path] = typer.Option(None, help="config file (for store.url)")) -> None:
    """Create or migrate the schema to the newest version."""
    from daemon.store.migrate import upgrade
    from daemon.store.repo import Store

    url = _db_url(db, config)
    from daemon.preflight import check_store

    for p in check_store(url):  # a SQLite file under a regular file, in a directory not ours, ...
        _fail(p.message)
    with _db_errors(url):
        before, after = upgrade(Store.open(url).engine)
    typer.echo(f"{mask_url(url)}: {before or 'empty'} -> {after}")


@db_app.command("current")
def db_current(db: Optional[str] = typer.Option(None), config: Optional[Path] = typer.Option(None)) -> None:
    """Show the schema version of a database and the version this program needs."""
    from daemon.store.migrate import current_revision, head_revision
    from daemon.store.repo import Store

    url = _db_url(db, config)
    with _db_errors(url):
        at = current_revision(Store.open(url).engine)
    typer.echo(f"{mask_url(url)}: at {at or 'nothing'}, head {head_revision()}")


@app.command()
def simulate(
    trace: Optional[list[str]] = typer.Option(
        None, help="request log to replay (Azure CSV, JSONL, CSV; .xz/.gz ok); once per service, in the config's "
                   "service order or as SERVICE=FILE"),
    demo: bool = typer.Option(False, "--demo", help="the built-in seeded workload (default without --trace)"),
    config: Optional[Path] = typer.Option(None, help="config file (default: built-in, = config.example.toml)"),
    db: Optional[str] = typer.Option(None, help=f"database URL (default: a fresh {DEFAULT_SIM_DB}); with --compare, "
                                     "a SQLite file that keeps the `ours` replay"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    warmup_s: Optional[float] = typer.Option(None, help="seconds of warm start before the workload"),
    spot_traces: Optional[Path] = typer.Option(None, help="replay spot availability traces from this directory "
                                               "(e.g. ../shared/data/spot/skyserve/AWS3) instead of the zone hazard"),
    seed: Optional[int] = typer.Option(None, help="simulated-cloud seed (default: provider.simulated.seed)"),
    demo_days: Optional[float] = typer.Option(None, help="length of the built-in workload in days "
                                              "(default: services.demand.demo_days)"),
    compare: Optional[str] = typer.Option(
        None, help="compare policies on identical inputs, judged request by request: all, or a list of "
                   "static,reactive,spothedge,melange,ours_no_forecast,ours,oracle"),
    plot: Optional[Path] = typer.Option(None, help="--compare: write PNG plots into this directory"),
    jobs: int = typer.Option(1, min=1, help="--compare: replays run in this many processes"),
    judge: str = typer.Option("auto", help="--compare: full, sampled (every Nth hour), or auto (sampled above "
                                           "400,000 requests)"),
    slo_target: float = typer.Option(0.995, min=0.0, max=1.0,
                                     help="--compare: attainment a single-type baseline's GPU type must reach"),
    gpus: Optional[str] = typer.Option(None, help="--compare: GPU types single-type baselines may use "
                                       "(comma-separated; default: every type a service allows)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every tick (JSON lines on stderr)"),
) -> None:
    """Replay a workload through the real control loop in virtual time against the simulated cloud."""
    from daemon.logging import configure_logging

    configure_logging("info" if verbose else "error", json=True)
    if trace and demo:
        _fail("give either --trace or --demo, not both")
    cfg = _load_config(config)
    sim_update = {}
    if spot_traces is not None:
        if not spot_traces.is_dir():
            _fail(f"--spot-traces {spot_traces}: not a directory")
        sim_update["spot_trace_dir"] = str(spot_traces)
    if seed is not None:
        sim_update["seed"] = seed
    if sim_update:
        sim = cfg.provider.simulated.model_copy(update=sim_update)
        cfg = cfg.model_copy(update={"provider": cfg.provider.model_copy(update={"simulated": sim})})
    if demo_days is not None:
        if demo_days <= 0:
            _fail("--demo-days must be positive")
        cfg = cfg.model_copy(update={"services": [
            s.model_copy(update={"demand": s.demand.model_copy(update={"demo_days": demo_days})})
            for s in cfg.services]})
    if cfg.provider.kind != "simulated":
        typer.echo(f"note: provider.kind = {cfg.provider.kind} in the config; a replay always uses the simulated "
                   "provider with [provider.simulated]", err=True)
    if compare is None and (plot is not None or jobs != 1 or gpus is not None):
        _fail("--plot, --jobs and --gpus go with --compare")
    ours_db = None
    if compare is not None and db is not None:
        from sqlalchemy.engine import make_url

        u = make_url(db)
        if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
            _fail("--compare keeps the `ours` replay's database only in a SQLite file (--db sqlite:///FILE)")
        ours_db = u.database
    try:
        trace_args = _trace_args(cfg, trace)
    except ValueError as e:
        _fail(f"--trace: {e}")
    _replay_preflight(cfg, config, db, _traced_services(cfg, trace_args))
    from daemon.demand.errors import TraceError
    from daemon.simulate import workloads_for

    try:
        workloads = workloads_for(cfg, trace_args)
    except TraceError as e:
        _fail(str(e))
    except ValueError as e:
        _fail(f"--trace: {e}")
    for wl in workloads.values():
        for msg in wl.bad_rows[:20]:
            typer.echo(f"warning: skipped malformed row: {msg}", err=True)
        if len(wl.bad_rows) > 20:
            typer.echo(f"warning: ... {len(wl.bad_rows) - 20} more malformed rows skipped", err=True)
    if compare is not None:
        _simulate_compare(cfg, workloads, compare, as_json, plot, jobs, judge, slo_target, gpus, warmup_s, ours_db)
        return

    url = db or DEFAULT_SIM_DB
    if db is None:
        path = Path(url.removeprefix("sqlite:///"))
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if p.exists():
                p.unlink()
    from daemon.simulate import simulate as run_sim

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
            with _db_errors(url):
                summary = run_sim(cfg, workloads, url, warmup_s=warmup_s, progress=on_progress).as_dict()
        except ValueError as e:
            from daemon.redact import redact, url_secrets

            _fail(redact(str(e), url_secrets(url)))
    summary = {**summary, "db": mask_url(summary["db"])}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(summary)
    _fail_if_ticks_failed(summary)


def _replay_preflight(cfg, config: Optional[Path], db: Optional[str], traced: frozenset[int] = frozenset()) -> None:
    """What a replay needs before it starts: a store it can write (--db; the default file is made
    anew), the files and the capacity of its config (daemon/preflight.py). `traced`: the indices
    of the services whose trace --trace gives (their configured demand.path is not read)."""
    from daemon.cli.common import check_url_or_fail
    from daemon.preflight import check, check_store, errors

    found = []
    if db is not None:
        check_url_or_fail(db)
        found = check_store(db, connect=True, key="--db")
    found += [p for p in check(cfg, str(config or "<built-in defaults>"), replay=True)
              if p.key not in {f"services[{i}].demand.path" for i in traced}]
    for p in found:
        typer.echo(f"{p.level}: {p.line(str(config or '<built-in defaults>') if p.key != '--db' else 'simulate')}",
                   err=True)
    if errors(found):
        raise typer.Exit(2)


def _fail_if_ticks_failed(summary: dict) -> None:
    """A replay most of whose ticks failed measured nothing: exit non-zero, saying why."""
    failed, ticks = summary.get("failed_ticks", 0), summary.get("ticks") or summary.get("decisions", 0)
    if ticks and failed * 2 > ticks:
        _fail(f"{failed} of {ticks} ticks failed; first failure: {summary.get('first_tick_error') or 'see the log'} "
              f"(fleetctl decisions list --outcome failed --db ...)", 1)


def _traced_services(cfg, trace_args) -> frozenset[int]:
    """Indices of the services --trace gives a trace for (by name, or in the config's order)."""
    if not trace_args:
        return frozenset()
    names = [s.name for s in cfg.services]
    if isinstance(trace_args, dict):
        return frozenset(names.index(n) for n in trace_args if n in names)
    return frozenset(range(min(len(trace_args), len(names))))


def _trace_args(cfg, traces: Optional[list[str]]):
    """--trace values: SERVICE=FILE pairs, or files in the config's service order."""
    if not traces:
        return None
    names = {s.name for s in cfg.services}
    named = {}
    plain = []
    for t in traces:
        head, sep, rest = t.partition("=")
        if sep and head in names:
            named[head] = rest
        elif sep and not Path(t).exists():
            raise ValueError(f"{t}: no such file, and {head!r} is not a service of the config "
                             f"({', '.join(sorted(names))})")
        else:
            plain.append(t)
    if named and plain:
        raise ValueError("give every trace as SERVICE=FILE, or none")
    return named or plain


def _simulate_compare(cfg, workloads, policies: str, as_json: bool, plot: Optional[Path], jobs: int, judge: str,
                      slo_target: float, gpus: Optional[str], warmup_s: Optional[float], ours_db: Optional[str]) -> None:
    from daemon.policies.compare import CompareError, CompareOptions, compare, parse_policies

    if judge not in ("auto", "full", "sampled"):
        _fail(f"--judge must be auto, full or sampled, got {judge!r}")
    try:
        names = parse_policies(policies)
    except CompareError as e:
        _fail(f"--compare: {e}")
    gpu_list = tuple(g.strip() for g in gpus.split(",") if g.strip()) if gpus else None
    opts = CompareOptions(policies=names, slo_target=slo_target, judge=judge, jobs=jobs, warmup_s=warmup_s,
                          gpus=gpu_list, ours_db=ours_db)

    def say(msg: str) -> None:
        print(f"compare: {msg}", file=sys.stderr, flush=True)

    try:
        result = compare(cfg, workloads, opts, progress=say)
    except CompareError as e:
        _fail(f"--compare: {e}")
    if plot is not None:
        from daemon.policies.plots import write_plots

        for f in write_plots(result, plot):
            say(f"wrote {f}")
    if as_json:
        typer.echo(json.dumps(result.result))
        return
    from daemon.policies.report import print_comparison

    print_comparison(result.result)


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
    hint = summary["db"] if "***" not in summary["db"] else "URL"
    c.print(f"next: fleetctl status --db {hint}   |   fleetctl audit --db {hint}")


@app.command()
def status(db: Optional[str] = typer.Option(None, help="database URL (default: FLEET_DB or sqlite:///fleet.db)"),
           config: Optional[Path] = typer.Option(None, help="config file (for store.url)"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """The fleet now: instances by pool and state, $/h, leader or standby, the last decision, recent events."""
    from daemon.cli.render import render_status
    from daemon.status import fleet_status

    with _reader(_db_url(db, config)) as r:
        st = fleet_status(r)
    if as_json:
        typer.echo(json.dumps(st))
        return
    from daemon.cli.table import terminal_width

    typer.echo(render_status(st, terminal_width()))


@contextmanager
def _reader(url: str):
    """A read-only store connection without SQLAlchemy (daemon/store/fastread.py): fast to start.
    A database that fails while it is read is one line too, never a traceback."""
    from daemon.store.fastread import StoreUnavailable, open_reader

    try:
        r = open_reader(url)
    except StoreUnavailable as e:
        _fail(str(e))
    with r, _db_errors(url):
        yield r


def _utc(d: Optional[datetime]) -> Optional[datetime]:
    return d.replace(tzinfo=timezone.utc) if d is not None and d.tzinfo is None else d


@app.command()
def audit(db: Optional[str] = typer.Option(None, help="database URL (default: FLEET_DB or sqlite:///fleet.db)"),
          config: Optional[Path] = typer.Option(None, help="config file (for store.url)"),
          since: Optional[datetime] = typer.Option(None, help="start of the window (ISO 8601, UTC)"),
          until: Optional[datetime] = typer.Option(None, help="end of the window (default: the last decision)"),
          by: str = typer.Option("service,gpu,market", help="comma-separated: service,cloud,region,zone,gpu,market,"
                                 "instance_type,state,reason,launch_reason"),
          fmt: str = typer.Option("table", "--format", help="table | csv | json"),
          as_json: bool = typer.Option(False, "--json", help="same as --format json"),
          prices: Optional[Path] = typer.Option(None, help="on-demand reference prices (offerings CSV format) for "
                                                "the savings baseline")) -> None:
    """Spend and instance-hours from lifecycle intervals x the price in effect; preemptions and the
    capacity-hours they cost; savings against an all-on-demand fleet of the same shape."""
    from daemon.audit import METRIC_COLUMNS, audit as run_audit, price_book

    fmt = "json" if as_json else fmt
    if fmt not in ("table", "csv", "json"):
        _fail(f"--format {fmt!r}: choose table, csv or json")
    if prices is not None and not prices.is_file():
        _fail(f"--prices {prices}: no such file")
    with _reader(_db_url(db, config)) as r:
        try:
            book = price_book(r, str(prices) if prices else None)
            rep = run_audit(r, _utc(since), _utc(until), tuple(x.strip() for x in by.split(",") if x.strip()), book)
        except ValueError as e:
            _fail(str(e))
    if fmt == "json":
        typer.echo(json.dumps(rep))
        return
    cols = rep["group_by"] + list(METRIC_COLUMNS)
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(cols)
        for g in rep["groups"]:
            w.writerow([g[c] for c in cols])
        return
    from daemon.cli.table import render, terminal_width

    t = rep["totals"]
    width = terminal_width()
    rows = [[str(g[k]) for k in rep["group_by"]] + [f"{g['instance_hours']:.1f}", f"{g['cost_usd']:.2f}",
                                                     f"{g['savings_usd']:.2f}", str(g["preemptions"]),
                                                     f"{g['capacity_hours_lost']:.2f}"] for g in rep["groups"]]
    head = [k.upper() for k in rep["group_by"]] + ["INST-H", "COST $", "SAVED $", "PREEMPT", "LOST-H"]
    n = len(rep["group_by"])
    import textwrap

    def say(text: str) -> None:
        typer.echo(textwrap.fill(text, width=width, subsequent_indent="    ", break_long_words=False,
                                 break_on_hyphens=False))

    say(f"{rep['since'] or 'start'} .. {rep['until']}: ${t['cost_usd']:.2f} for {t['instance_hours']:.1f} "
        f"instance-hours ({t['gpu_hours']:.1f} GPU-hours); all on demand ${t['on_demand_cost_usd']:.2f}, "
        f"saved ${t['savings_usd']:.2f} ({t['savings_pct']:.1f}%)")
    typer.echo(render(head, rows, width, right=set(range(n, n + 5)), split=n))
    say(f"preemptions {t['preemptions']} ({t['not_replaced']} not replaced within "
        f"{rep['replacement_window_s'] / 60:.0f} min), capacity lost {t['capacity_hours_lost']:.2f} "
        f"instance-hours ({t['gpu_hours_lost']:.2f} GPU-hours)")
    say("events by reason: " + ", ".join(f"{k} {v}" for k, v in rep["events_by_reason"].items()))
    say("decisions: " + (", ".join(f"{k} {v}" for k, v in rep["decisions_by_outcome"].items()) or "none"))
    say("savings baseline: " + "; ".join(f"{k}: {v}" for k, v in rep["reference_prices"].items()))


@app.command()
def events(db: Optional[str] = typer.Option(None, help="database URL (default: FLEET_DB or sqlite:///fleet.db)"),
           config: Optional[Path] = typer.Option(None, help="config file (for store.url)"),
           since: Optional[datetime] = typer.Option(None, help="from this time (ISO 8601, UTC)"),
           until: Optional[datetime] = typer.Option(None, help="before this time (ISO 8601, UTC)"),
           reason: Optional[str] = typer.Option(None, help="comma-separated reasons, e.g. preempted,launch_failed"),
           instance: Optional[str] = typer.Option(None, help="one instance, by id or provider name"),
           service: Optional[str] = typer.Option(None, help="one service"),
           limit: int = typer.Option(50, help="the latest N matching events (0: all)"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Lifecycle events (every state change of every instance, with its reason), oldest first."""
    from daemon.lifecycle import Reason
    from daemon.cli.render import render_events
    from daemon.status import list_events

    reasons = tuple(x.strip() for x in (reason or "").split(",") if x.strip())
    unknown = [x for x in reasons if x not in {str(r) for r in Reason}]
    if unknown:
        _fail(f"--reason {', '.join(unknown)}: unknown; choose from {', '.join(str(r) for r in Reason)}")
    if limit < 0:
        _fail("--limit must be 0 (all) or more")
    with _reader(_db_url(db, config)) as r:
        evs = list_events(r, _utc(since), _utc(until), reasons, instance, service, limit)
    if instance and not evs:
        _fail(f"no events for instance {instance!r} (an id like chat-000012 or a name like fleet-chat-000012)", 1)
    if as_json:
        typer.echo(json.dumps(evs))
        return
    from daemon.cli.table import terminal_width

    typer.echo(render_events(evs, terminal_width()) if evs else "No matching events.")


decisions_app = typer.Typer(help="Decisions: one per tick, with what it saw, planned and did.", no_args_is_help=True)
app.add_typer(decisions_app, name="decisions")


@decisions_app.command("show")
def decisions_show(decision_id: int = typer.Argument(..., help="decision id (fleetctl status shows the last)"),
                   db: Optional[str] = typer.Option(None, help="database URL"),
                   config: Optional[Path] = typer.Option(None, help="config file (for store.url)"),
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """Explain one decision in words: inputs, forecast, plan, binding limits, actions, outcome."""
    from daemon.explain import DecisionNotFound, explain, render

    with _reader(_db_url(db, config)) as r:
        try:
            doc = explain(r, decision_id)
        except DecisionNotFound as e:
            _fail(str(e), 1)
    if as_json:
        typer.echo(json.dumps(doc))
        return
    from daemon.cli.table import terminal_width

    typer.echo(render(doc, terminal_width()))


@decisions_app.command("list")
def decisions_list(db: Optional[str] = typer.Option(None, help="database URL"),
                   config: Optional[Path] = typer.Option(None, help="config file (for store.url)"),
                   since: Optional[datetime] = typer.Option(None, help="from this time (ISO 8601, UTC)"),
                   outcome: Optional[str] = typer.Option(None, help="applied, dry_run, paused, failed, interrupted"),
                   limit: int = typer.Option(20, help="the latest N (0: all)"),
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """The latest decisions, one line each."""
    from daemon.store.fastread import bind_ts, ts

    with _reader(_db_url(db, config)) as r:
        cond, params = [], []
        if since is not None:
            cond.append("at >= ?")
            params.append(bind_ts(r, _utc(since)))
        if outcome:
            cond.append("outcome = ?")
            params.append(outcome)
        rows = r.rows("SELECT id, at, outcome, plan_status, planned_cost_per_hour, fleet_cost_per_hour, launches, "
                      "terminations FROM decisions" + (" WHERE " + " AND ".join(cond) if cond else "")
                      + " ORDER BY id DESC" + (" LIMIT ?" if limit else ""), *params, *([limit] if limit else []))
    out = [{"id": i, "at": ts(at).isoformat(), "outcome": o, "plan_status": p, "planned_cost_per_hour_usd": pc,
            "fleet_cost_per_hour_usd": fc, "launches": la, "terminations": te}
           for i, at, o, p, pc, fc, la, te in reversed(rows)]
    if as_json:
        typer.echo(json.dumps(out))
        return
    from daemon.cli.table import render, terminal_width

    typer.echo(render(["ID", "AT", "OUTCOME", "PLAN", "PLANNED $/H", "FLEET $/H", "LAUNCH", "TERM"],
                      [[str(d["id"]), d["at"][:19].replace("T", " "), d["outcome"], str(d["plan_status"]),
                        f"{d['planned_cost_per_hour_usd'] or 0:.2f}", f"{d['fleet_cost_per_hour_usd'] or 0:.2f}",
                        str(d["launches"]), str(d["terminations"])] for d in out], terminal_width(),
                      right={0, 4, 5, 6, 7}))


def _set_paused(paused: bool, db: Optional[str], config: Optional[Path], note: Optional[str]) -> None:
    import getpass
    import socket

    from daemon.store.repo import Store

    url = _db_url(db, config)
    store = _open_existing(url)
    with _db_errors(url):
        from sqlalchemy import inspect

        if "controls" not in inspect(store.engine).get_table_names():
            _fail(f"{mask_url(url)}: this schema has no controls table yet (run `fleetctl db upgrade --db URL`)")
        with store.session() as s:
            try:
                who = f"{getpass.getuser()}@{socket.gethostname()}"
            except Exception:
                who = socket.gethostname()
            before = Store.set_paused(s, paused, datetime.now(timezone.utc), who, note)
    if paused:
        typer.echo(("already paused; note updated" if before else "paused")
                   + ": fleetd plans and records but stops acting from its next tick (fleetctl resume to undo)")
    else:
        typer.echo("resumed: fleetd acts again from its next tick" if before else "was not paused; nothing to do")


@app.command()
def pause(db: Optional[str] = typer.Option(None, help="database URL"),
          config: Optional[Path] = typer.Option(None, help="config file (for store.url)"),
          note: Optional[str] = typer.Option(None, help="why (shown by fleetctl status)")) -> None:
    """Stop acting on the fleet (no launches, drains or terminations); instances stay as they are."""
    _set_paused(True, db, config, note)


@app.command()
def resume(db: Optional[str] = typer.Option(None, help="database URL"),
           config: Optional[Path] = typer.Option(None, help="config file (for store.url)")) -> None:
    """Undo `fleetctl pause`: the daemon acts again from its next tick."""
    _set_paused(False, db, config, None)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
