"""Mélange compatibility: its input format, its answers on its own files, and the CLI contract."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import plan_cmd
from daemon.config import PolicyConfig
from daemon.domain import BucketGrid, CapacityTable, DemandForecast, FleetInstance, Market, Offering
from daemon.plan.inputs import PlanInputs, ServiceDemand
from daemon.plan.melange import (
    MelangeInputError, MelangeProblem, load_melange, parse_melange, solve_slices, solve_with_planner,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "melange" / "melange-release"
EXAMPLE = DATA / "config" / "example.json"
needs_data = pytest.mark.skipif(not EXAMPLE.exists(), reason=f"shared Mélange data missing at {DATA}")
runner = CliRunner()


@needs_data
def test_example_optimum_reference_and_planner():
    problem = load_melange(EXAMPLE)
    ref = solve_slices(problem)
    ours, plan = solve_with_planner(problem)
    # the answer the Mélange README/DATA-README state: 3 A10G + 1 A100-80GB = $6.70/h
    for r in (ref, ours):
        assert r.counts == {"A10G": 3, "A100-80GB": 1}
        assert r.cost == pytest.approx(6.70)
    assert plan.status == "optimal"
    # continuous shares may split a cell across types: never dearer, here cheaper
    cont, _ = solve_with_planner(problem, continuous=True)
    assert cont.cost <= ours.cost + 1e-9 and cont.cost == pytest.approx(4.68)


@needs_data
@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "config-history").glob("*.json"))
                         if (DATA / "config-history").exists() else [])
def test_history_examples_match_reference(name):
    problem = load_melange(DATA / "config-history" / name)
    ref, ours = solve_slices(problem), solve_with_planner(problem)[0]
    assert ours.cost == pytest.approx(ref.cost) and ours.counts == ref.counts


def random_problem(rng: random.Random, n_in=3, n_out=3, sf=3) -> MelangeProblem:
    gpus = {}
    for g, (cost, speed) in {"A": (1.0, 1.0), "B": (3.6, 5.0), "C": (0.7, 0.5)}.items():
        tputs = tuple(tuple(round(speed * 40 / (1 + i) / (1 + 2 * j) * rng.uniform(0.6, 1.4), 3)
                            for j in range(n_out)) for i in range(n_in))
        gpus[g] = (cost, tputs)
    w = [[rng.random() for _ in range(n_out)] for _ in range(n_in)]
    tot = sum(map(sum, w))
    dist = tuple(tuple(x / tot for x in row) for row in w)
    return MelangeProblem(gpus, dist, rng.uniform(5, 60), sf)


def test_slice_counts_equal_reference_slices_on_random_instances():
    rng = random.Random(3)
    for _ in range(6):
        p = random_problem(rng)
        ref = solve_slices(p)
        ours = solve_with_planner(p)[0]
        cont = solve_with_planner(p, continuous=True)[0]
        assert ref.status == "optimal"
        assert ours.cost == pytest.approx(ref.cost, abs=1e-6)  # same feasible set, no symmetry
        assert cont.cost <= ref.cost + 1e-6


@pytest.mark.parametrize("data,needle", [
    ([], "top level must be a JSON object"),
    ({"gpu_info": {}, "workload_distribution": [[1]], "total_request_rate": 1}, "gpu_info"),
    ({"gpu_info": {"A": {"cost": 1, "tputs": [[1, 2]]}}, "workload_distribution": [[1]],
      "total_request_rate": 1}, "gpu_info.A.tputs: is 1x2"),
    ({"gpu_info": {"A": {"cost": -1, "tputs": [[1]]}}, "workload_distribution": [[1]],
      "total_request_rate": 1}, "gpu_info.A.cost"),
    ({"gpu_info": {"A": {"cost": 1, "tputs": [[1]]}}, "workload_distribution": [[1]],
      "total_request_rate": 1, "slice_factor": 0}, "slice_factor"),
    ({"gpu_info": {"A": {"cost": 1, "tputs": [[1]]}}, "workload_distribution": [["x"]],
      "total_request_rate": 1}, "workload_distribution[0][0]"),
    ({"gpu_info": {"A": {"cost": 1, "tputs": [[1]]}}, "workload_distribution": [[1]],
      "total_request_rate": 1, "rate": 3}, "rate: unknown field"),
])
def test_bad_input_names_field(data, needle):
    with pytest.raises(MelangeInputError) as e:
        parse_melange(data, "f.json")
    assert "f.json" in str(e.value) and needle in str(e.value)


# --- CLI ----------------------------------------------------------------------------------------

@needs_data
def test_cli_melange_contract():
    res = runner.invoke(plan_cmd.app, ["--melange", str(EXAMPLE), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"A10G", "A100-80GB", "cost", "solve_seconds"}
    assert out["A10G"] == 3 and out["A100-80GB"] == 1 and out["cost"] == pytest.approx(6.70)
    assert 0 <= out["solve_seconds"] < 5
    res = runner.invoke(plan_cmd.app, ["--melange", str(EXAMPLE), "--solver", "highs"])
    assert res.exit_code == 0 and json.loads(res.stdout)["cost"] == pytest.approx(6.70)


def test_cli_melange_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"gpu_info": \n oops}')
    res = runner.invoke(plan_cmd.app, ["--melange", str(bad)])
    assert res.exit_code == 2 and "bad.json: line 2" in res.stderr
    res = runner.invoke(plan_cmd.app, ["--melange", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "cannot read" in res.stderr
    unservable = tmp_path / "u.json"
    unservable.write_text(json.dumps({"gpu_info": {"A": {"cost": 1, "tputs": [[1, 0]]}},
                                      "workload_distribution": [[0.5, 0.5]], "total_request_rate": 2}))
    res = runner.invoke(plan_cmd.app, ["--melange", str(unservable)])
    assert res.exit_code == 1 and "infeasible" in res.stderr


def _store_inputs(cfg, db):
    """What the loop's loader would build from the store: here, a fixed small world."""
    grid = BucketGrid((0, 1000), (0, 1000))
    now = __import__("datetime").datetime(2026, 1, 1)
    od = Offering("aws", "r1", "z1", "g5", "A10G", 1, Market.ON_DEMAND, 1.0)
    spot = Offering("aws", "r1", "z2", "g5", "A10G", 1, Market.SPOT, 0.4)
    fleet = tuple(FleetInstance(f"i{k}", f"n{k}", "chat", od, "running") for k in range(5))
    fc = DemandForecast("chat", now, 360, 20.0, ((1.0,),), "test")
    return PlanInputs(now, grid, (ServiceDemand("chat", fc, 1, ("A10G",)),),
                      CapacityTable({("chat", "A10Gx1"): ((10.0,),)}), (od, spot), fleet,
                      PolicyConfig(headroom=0.0, spot_loss_coverage=0.0))


def test_cli_dry_run_from_the_store(monkeypatch, tmp_path):
    """`fleetctl plan` builds its inputs from the store, as the next tick would."""
    from daemon.cli.fleetctl import app as fleetctl_app

    res = runner.invoke(fleetctl_app, ["plan", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert res.exit_code == 2 and "no database" in res.output
    from tests.conftest import AZURE_CONV, need

    url = f"sqlite:///{tmp_path / 'sim.db'}"
    sim = runner.invoke(fleetctl_app, ["simulate", "--trace", str(need(AZURE_CONV)), "--db", url, "--json"])
    assert sim.exit_code == 0, sim.output
    res = runner.invoke(fleetctl_app, ["plan", "--db", url, "--json"])
    assert res.exit_code in (0, 1), res.output
    diff = json.loads(res.stdout)
    assert diff["cost_per_hour_current"] > 0 and "rows" in diff


def test_cli_dry_run_diff(monkeypatch, store, db_url):
    import daemon.loop.tick as tick

    monkeypatch.setattr(tick, "plan_inputs_now", lambda loop, now: _store_inputs(loop.cfg, None))
    res = runner.invoke(plan_cmd.app, ["--json", "--db", db_url])
    assert res.exit_code == 0, res.output
    diff = json.loads(res.stdout)
    assert diff["status"] == "optimal" and diff["cost_per_hour_current"] == pytest.approx(5.0)
    rows = {r["offering"]: r for r in diff["rows"]}
    # 20 req/s on 10 req/s replicas: 2 replicas; spot at 0.4 replaces on-demand within 4 terminations
    assert sum(r["target"] for r in rows.values()) == 2
    assert diff["cost_per_hour_delta"] == pytest.approx(diff["cost_per_hour_planned"] - 5.0)
    assert diff["terminations"] <= 4
    res = runner.invoke(plan_cmd.app, ["--db", db_url])
    assert res.exit_code == 0 and "cost/h: now 5.00 -> plan" in res.stdout and "aws/r1/z1/g5/on-demand" in res.stdout
