"""`fleetctl forecast ...`: evaluate the demand forecaster on a series, and show a service's forecast.

Heavy imports (numpy, pandas, statsmodels, matplotlib) happen inside the
commands: `fleetctl status` imports this module and must start fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Demand forecasts: backtest the rate forecaster, show a service's forecast.", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str = "duration") -> float:
    """`30m`, `1h`, `90s`, `2d` or plain seconds."""
    t = text.strip().lower()
    try:
        if t and t[-1] in _UNITS:
            v = float(t[:-1]) * _UNITS[t[-1]]
        else:
            v = float(t)
    except ValueError:
        raise typer.BadParameter(f"{what} must look like 30m, 1h, 90s or seconds, got {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise typer.BadParameter(f"{what} must be > 0, got {text!r}")
    return v


def load_series(path: Path, fmt: str, select: Optional[str], window_s: float = 60.0):
    """A RateSeries from a file in one of the backtest formats; errors name file and line."""
    from forecast.series import series_from_points
    from forecast.sources.rate_csv import read_rate_csv, read_servegen_pool

    if fmt == "rate-csv":
        return read_rate_csv(path)
    if fmt == "servegen-pool":
        if not select:
            raise typer.BadParameter("--format servegen-pool needs --select model=NAME")
        return read_servegen_pool(path, select)
    if fmt == "requests":
        import numpy as np

        from daemon.demand.request_log import scan

        ts = np.array([r.timestamp for r in scan(path, "auto", complete=True).rows])
        if len(ts) == 0:
            raise typer.BadParameter(f"{path}: no request rows")
        k = np.floor(ts / window_s).astype(np.int64)
        ks, counts = np.unique(k, return_counts=True)
        full = np.arange(ks[0], ks[-1] + 1)
        rate = np.zeros(len(full))
        rate[ks - ks[0]] = counts / window_s  # a request log sees empty windows: real zeros
        return series_from_points(full * window_s, rate, window_s)
    raise typer.BadParameter(f"--format must be rate-csv, servegen-pool or requests, got {fmt!r}")


@app.command("backtest")
def backtest_cmd(
    series: Path = typer.Option(..., "--series", help="input file", exists=True, dir_okay=False),
    fmt: str = typer.Option(..., "--format", help="rate-csv | servegen-pool | requests"),
    select: Optional[str] = typer.Option(None, "--select", help="servegen-pool: model=NAME"),
    model: str = typer.Option("auto", "--model", help="auto or one candidate (see --list-models)"),
    horizon: str = typer.Option(..., "--horizon", help="forecast horizon: 30m, 60m, ..."),
    test_days: float = typer.Option(3.0, "--test-days", min=0.01, help="evaluate on the last N days"),
    quantile: float = typer.Option(0.9, "--quantile", min=0.01, max=0.99),
    refit_every: str = typer.Option("6h", "--refit-every", help="refit schedule during the test (the daemon: 1h; "
                                    "the statsmodels candidates make short ones slow)"),
    window: str = typer.Option("60s", "--window", help="requests format: window length"),
    history_days: Optional[float] = typer.Option(None, "--history-days", min=0.1, help="use only the last N days of the file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Rolling-origin evaluation over the last N days, the forecaster run online and refitted as the daemon would.

    For the held-back-days benchmark of issue 15 see bench/forecast_bench.py.
    """
    from forecast.backtest import backtest
    from forecast.models import BASELINES, CANDIDATES
    from forecast.sources import SourceError

    h = parse_duration(horizon, "--horizon")
    refit = parse_duration(refit_every, "--refit-every")
    if model != "auto" and model not in CANDIDATES:
        raise typer.BadParameter(f"--model must be auto or one of {', '.join(CANDIDATES)}, got {model!r}")
    try:
        s = load_series(series, fmt, select, parse_duration(window, "--window"))
    except SourceError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if history_days is not None:
        s = s.last(int(round(history_days * 86400 / s.step_s)))
    # auto: every candidate and the selection; NAME: the baselines and that one (its row also under "auto")
    if model == "auto":
        names = list(BASELINES) + [m for m in CANDIDATES if m not in BASELINES]
    else:
        names = list(BASELINES) + ([model] if model not in BASELINES else [])
    results = {}
    try:
        for name in names:
            results[name] = backtest(s, name, h, quantile, test_days, refit_every_s=refit)
        auto = backtest(s, "auto", h, quantile, test_days, refit_every_s=refit) if model == "auto" else results[model]
    except ValueError as e:
        typer.echo(f"error: {series}: {e}", err=True)
        raise typer.Exit(2)
    # the model that made most of the test's forecasts (too little history: "recent_peak")
    chosen = max(auto.chosen, key=auto.chosen.get) if auto.chosen else "none"
    models = {n: _clean(r.metrics()) for n, r in results.items()}
    models["auto"] = _clean(auto.metrics())
    out = {"horizon_s": h, "quantile": quantile, "chosen": chosen, "models": models}
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"{series.name}: horizon {h:g}s, quantile {quantile:g}, last {test_days:g} days, refit every {refit:g}s")
    typer.echo(f"{'model':<22}{'MASE':>8}{'sMAPE':>8}{'pinball':>12}{'coverage':>10}")
    for n, m in models.items():
        typer.echo(f"{n:<22}{_fmt(m['mase']):>8}{_fmt(m['smape']):>8}{_fmt(m['pinball']):>12}{_fmt(m['coverage']):>10}")
    typer.echo(f"auto chose: {chosen} (forecasts made by each: {auto.chosen})")


def _clean(m: dict) -> dict:
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)) for k, v in m.items()}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_forecast(history, forecasts, plot: Optional[Path] = None, title: str = "") -> str:
    """Text table of recent history and forecasts, plus a PNG plot when `plot` is given.

    `history`: the service's DemandWindows; `forecasts`: DemandForecasts (e.g.
    the last few ticks' ones from the store, or one fresh `forecast_demand`).
    The lead's `forecast show --service NAME` reads both from the store and calls this.
    """
    from forecast.series import series_from_windows

    lines = [title] if title else []
    if history:
        s = series_from_windows(history)
        lines.append(f"history: {len(history)} windows of {s.step_s:g}s, {s.observed()} observed")
        lines.append(f"{'window start (UTC)':<27}{'rate rps':>10}")
        for t, v in list(zip(s.times(), s.values))[-12:]:
            from forecast.series import from_epoch

            lines.append(f"{from_epoch(t).isoformat():<27}{('missing' if math.isnan(v) else f'{v:.3f}'):>10}")
    if forecasts:
        lines.append("")
        lines.append(f"{'made at (UTC)':<27}{'horizon s':>10}{'q':>6}{'rate rps':>10}{'median':>10}{'low':>10}  method")
        for f in forecasts:
            d = f.details or {}
            lines.append(f"{f.at.isoformat():<27}{f.horizon_s:>10g}{f.quantile:>6g}{f.rate_rps:>10.3f}"
                         f"{d.get('point_rps', float('nan')):>10.3f}{d.get('lo_rps', float('nan')):>10.3f}  {f.method}"
                         + ("  LEVEL SHIFT" if d.get("level_shift") else "") + ("  MIX SHIFT" if d.get("mix_shift") else ""))
    if plot is not None:
        _plot(history, forecasts, plot, title)
        lines.append(f"plot written to {plot}")
    return "\n".join(lines)


def _plot(history, forecasts, path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise typer.BadParameter("--plot needs matplotlib (pip install matplotlib)") from None
    from datetime import timedelta

    from forecast.series import from_epoch, series_from_windows

    fig, ax = plt.subplots(figsize=(10, 4))
    if history:
        s = series_from_windows(history)
        ax.plot([from_epoch(t) for t in s.times()], s.values, lw=1, color="tab:blue", label="observed rate")
    if forecasts:
        xs = [f.at + timedelta(seconds=f.horizon_s) for f in forecasts]
        q = [f.rate_rps for f in forecasts]
        med = [(f.details or {}).get("point_rps", f.rate_rps) for f in forecasts]
        lo = [(f.details or {}).get("lo_rps", f.rate_rps) for f in forecasts]
        if len(forecasts) > 1:
            ax.fill_between(xs, lo, q, color="tab:orange", alpha=0.25, label="prediction interval")
            ax.plot(xs, med, color="tab:orange", lw=1, label="median forecast")
            ax.plot(xs, q, color="tab:red", lw=1, ls="--", label=f"q{forecasts[0].quantile:g} (planned)")
        else:
            ax.errorbar(xs, med, yerr=[[med[0] - lo[0]], [q[0] - med[0]]], fmt="o", color="tab:red",
                        label=f"forecast (median, interval to q{forecasts[0].quantile:g})")
    ax.set_ylabel("requests / s")
    ax.set_title(title or "demand")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _store_history(service: str):
    """(history windows, recorded forecasts) of a service from the store (FLEET_CONFIG, FLEET_DB)."""
    import os

    from daemon.cli.common import db_errors, fail, load_config_or_fail, open_existing
    from daemon.store.repo import Store

    cfg = load_config_or_fail(Path(os.environ["FLEET_CONFIG"]) if os.environ.get("FLEET_CONFIG") else None)
    url = os.environ.get("FLEET_DB", cfg.store.url)
    store = open_existing(url)
    with db_errors(url), store.session() as s:
        try:
            return Store.forecast_history(s, service, cfg.buckets.grid(), cfg.loop.history_s)
        except LookupError as e:
            fail(str(e))


def windows_from_series(series, service: str):
    """A rate series as 1x1-grid DemandWindows (no size information); missing windows are left out."""
    from daemon.domain import DemandWindow
    from forecast.series import from_epoch

    return [
        DemandWindow(service, from_epoch(t), series.step_s, ((float(v) * series.step_s,),))
        for t, v in zip(series.times(), series.values)
        if not math.isnan(v)
    ]


@app.command("show")
def show_cmd(
    service: Optional[str] = typer.Option(None, "--service", help="a configured service (history from the store)"),
    series: Optional[Path] = typer.Option(None, "--series", help="or: a series file", exists=True, dir_okay=False),
    fmt: str = typer.Option("rate-csv", "--format", help="with --series: rate-csv | servegen-pool | requests"),
    select: Optional[str] = typer.Option(None, "--select"),
    horizon: str = typer.Option("6m", "--horizon"),
    quantile: float = typer.Option(0.9, "--quantile", min=0.01, max=0.99),
    hours: float = typer.Option(12.0, "--hours", min=0.0, help="with --series: also replay the forecasts of the last N hours"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a PNG plot here"),
) -> None:
    """History and forecast with intervals, as a table and optionally a plot."""
    from forecast import fit_demand, forecast_demand
    from forecast.series import DAY_S
    from forecast.sources import SourceError

    h = parse_duration(horizon, "--horizon")
    if service is not None:
        history, forecasts = _store_history(service)
        typer.echo(render_forecast(history, forecasts, plot, title=f"service {service}"))
        return
    if series is None:
        raise typer.BadParameter("give --service NAME or --series FILE")
    try:
        s = load_series(series, fmt, select)
    except SourceError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    name = "series"
    wins = windows_from_series(s, name)
    end = s.end
    fit_at = end - hours * 3600
    state = fit_demand([w for w in wins if w.start.timestamp() + w.seconds <= fit_at], fit_at,
                       horizons_s=(h,), quantiles=(quantile,)) if hours > 0 else fit_demand(wins, end, horizons_s=(h,), quantiles=(quantile,))
    forecasts = []
    recent = [w for w in wins if w.start.timestamp() >= end - 4 * DAY_S - hours * 3600]
    t = fit_at if hours > 0 else end
    while t <= end - h + 1e-6 or not forecasts:
        forecasts.append(forecast_demand(recent, t, h, quantile, state, service=name))
        t += s.step_s
        if t > end:
            break
    typer.echo(render_forecast([w for w in wins if w.start.timestamp() >= end - 2 * DAY_S], forecasts, plot,
                               title=f"{series.name}: {state.rate.method}, horizon {h:g}s, q{quantile:g}"))
