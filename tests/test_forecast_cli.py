"""`fleetctl forecast backtest|show` through typer's CliRunner on the module's own app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from daemon.cli.forecast_cmd import app, render_forecast
from forecast.models import CANDIDATES

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "traces"
runner = CliRunner()


def _rate_csv(tmp_path: Path, days: float = 4.0) -> Path:
    """A 10-minute rate series with a daily cycle and a few blank (missing) windows."""
    n = int(days * 144)
    t = np.arange(n)
    rng = np.random.default_rng(3)
    rate = 50 * np.exp(0.5 * np.sin(2 * np.pi * t / 144) + rng.normal(0, 0.05, n))
    lines = ["timestamp,rate"]
    for i in range(n):
        lines.append(f"{1_700_006_400 + 600 * i},{'' if i in (200, 201, 350) else f'{rate[i]:.4f}'}")
    p = tmp_path / "rates.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_backtest_json_contract(tmp_path):
    p = _rate_csv(tmp_path)
    res = runner.invoke(app, ["backtest", "--series", str(p), "--format", "rate-csv", "--horizon", "30m",
                              "--test-days", "0.5", "--refit-every", "12h", "--history-days", "3.5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["horizon_s"] == 1800 and out["quantile"] == 0.9
    assert set(out["models"]) == set(CANDIDATES) | {"auto"}
    assert out["chosen"] in CANDIDATES
    for name, m in out["models"].items():
        assert set(m) == {"mase", "smape", "pinball", "coverage"}, name
        assert 0 <= m["coverage"] <= 1
    # the daily cycle: a seasonal model beats carrying the last value forward
    assert out["models"]["auto"]["pinball"] < out["models"]["last_value"]["pinball"]


def test_backtest_servegen_pool_single_model(tmp_path):
    pool = DATA / "servegen" / "servegen_pool_rates_10min.csv"
    if not pool.exists():
        pytest.skip(f"shared data missing: {pool}")
    res = runner.invoke(app, ["backtest", "--series", str(pool), "--format", "servegen-pool", "--select",
                              "model=m-small", "--model", "last_value", "--horizon", "60m", "--test-days", "0.25",
                              "--refit-every", "1d", "--history-days", "3.5"])
    assert res.exit_code == 0, res.output
    assert "auto chose: last_value" in res.stdout
    assert "holt_winters" not in res.stdout  # only the baselines and the named model were evaluated


def test_backtest_requests_format_on_azure_trace():
    path = DATA / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv.xz"
    if not path.exists():
        pytest.skip(f"shared data missing: {path}")
    res = runner.invoke(app, ["backtest", "--series", str(path), "--format", "requests", "--horizon", "5m",
                              "--test-days", "0.01", "--json"])
    # one hour of requests: far too little for a daily model, but the rules still forecast
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    # one hour of history: every fit falls back to the recent-peak rule, and says so
    assert out["chosen"] == "recent_peak"
    assert out["models"]["auto"]["coverage"] is not None


def test_bad_inputs_are_clear_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("timestamp,rate\n0,1\n600,oops\n")
    res = runner.invoke(app, ["backtest", "--series", str(p), "--format", "rate-csv", "--horizon", "30m"])
    assert res.exit_code == 2 and "bad.csv: line 3: field 'rate'" in res.output
    good = _rate_csv(tmp_path, 1)
    res = runner.invoke(app, ["backtest", "--series", str(good), "--format", "rate-csv", "--horizon", "soon"])
    assert res.exit_code != 0 and "--horizon" in res.output
    res = runner.invoke(app, ["backtest", "--series", str(good), "--format", "rate-csv", "--horizon", "30m",
                              "--model", "magic"])
    assert res.exit_code != 0 and "magic" in res.output
    res = runner.invoke(app, ["backtest", "--series", str(good), "--format", "parquet", "--horizon", "30m"])
    assert res.exit_code != 0 and "--format" in res.output


def test_show_from_series_renders_table_and_plot(tmp_path, monkeypatch):
    p = _rate_csv(tmp_path, 3.5)
    png = tmp_path / "f.png"
    res = runner.invoke(app, ["show", "--series", str(p), "--horizon", "30m", "--hours", "2", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "missing" not in res.stdout.splitlines()[3]
    assert "horizon s" in res.stdout and "plot written" in res.stdout
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    # --service reads the store (FLEET_DB): a missing database is one clear line.
    monkeypatch.setenv("FLEET_DB", f"sqlite:///{tmp_path / 'none.db'}")
    res = runner.invoke(app, ["show", "--service", "chat"])
    assert res.exit_code == 2 and "no database at" in res.output


def test_render_forecast_is_usable_without_a_plot():
    assert render_forecast([], [], None, title="empty") == "empty"


def test_module_import_is_light():
    code = ("import sys, daemon.cli.forecast_cmd; "
            "heavy = [m for m in ('numpy', 'pandas', 'statsmodels', 'matplotlib') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
