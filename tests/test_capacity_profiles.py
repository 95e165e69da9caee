"""Profiles on disk, their mapping onto a service grid, and capacity_table's choice of source."""

import json
from datetime import datetime, timezone

import pytest

from daemon.capacity import build_capacity, capacity_table
from daemon.capacity.profile import (Cell, CurvePoint, Profile, ProfileError, Provenance, Slo, load_profile,
                                     load_profiles, save_profile)
from daemon.config import parse_config
from daemon.domain import BucketGrid

T0 = datetime(2025, 6, 1, tzinfo=timezone.utc)


def make_profile(kind="measured", gpu="A10G", model="meta-llama/Llama-2-7b-hf", tp=1, values=None, slo=(2.0, 120.0),
                 ins=((128, 128), (512, 512), (2048, 2048)), outs=((32, 32), (128, 128)), created=T0, curve=None):
    values = values or [[20.0, 8.0], [6.0, 3.0], [1.5, 0.8]]
    cells = [Cell(input_tokens=i, output_tokens=o, max_rps=values[a][b], curve=curve or [])
             for a, i in enumerate(ins) for b, o in enumerate(outs)]
    return Profile(model=model, gpu=gpu, tp=tp, slo=Slo(ttft_p99_s=slo[0], tpot_p99_ms=slo[1]), cells=cells,
                   provenance=Provenance(kind=kind, source=f"test-{kind}", created=created))


def cfg(**over):
    base = {"services": [{"name": "chat", "model": "meta-llama/Llama-2-7b-hf", "gpus": ["A10G", "L4"],
                          "slo": {"ttft_p99_s": 2.0, "tpot_p99_ms": 120.0}}],
            "buckets": {"input_edges": [0, 256, 1024, 4096], "output_edges": [0, 64, 256]}}
    base.update(over)
    return parse_config(base)


def test_roundtrip_and_key(tmp_path):
    p = make_profile()
    path = save_profile(p, tmp_path)
    assert path.name == "Llama-2-7b-hf__A10Gx1__bf16__measured__ttft2-tpot120.json"
    assert load_profile(path) == p


def test_bad_files_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "x",\n "gpu": }')
    with pytest.raises(ProfileError, match=r"bad.json: not valid JSON: line 2"):
        load_profile(bad)
    data = json.loads(make_profile().model_dump_json())
    data["cells"][1]["max_rps"] = -1
    data["provenance"]["kind"] = "guessed"
    data["colour"] = "red"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(data))
    with pytest.raises(ProfileError) as e:
        load_profile(wrong)
    msg = str(e.value)
    assert "wrong.json" in msg and "cells[1].max_rps" in msg and "provenance.kind" in msg and "colour: unknown key" in msg
    found, errors = load_profiles(tmp_path)
    assert found == [] and len(errors) == 2


def test_to_grid_interpolates_clamps_small_and_leaves_large_uncovered():
    p = make_profile()
    grid = BucketGrid((0, 256, 1024, 4096), (0, 64, 256))
    m, missing = p.to_grid(grid)
    # input centre 128 -> exactly the 128 row; output centre 32 -> the 32 column
    assert m[0][0] == pytest.approx(20.0)
    # output centre 160 lies between 128 and... beyond 128: uncovered
    assert m[0][1] is None
    # input centre 640 lies between 512 and 2048 (log interpolation), output 32
    assert 1.5 < m[1][0] < 6.0
    assert m[2][0] is None  # centre 2560 > 2048
    assert missing == 4
    small = BucketGrid((0, 100, 200), (0, 10, 20))
    m2, miss2 = p.to_grid(small)
    assert miss2 == 0 and m2[0][0] == pytest.approx(20.0)  # smaller than anything profiled: clamped to the smallest (safe)


def test_curves_answer_for_another_slo_and_without_curves_only_stricter_slos_count():
    curve = [CurvePoint(rate_rps=r, achieved_rps=r, ttft_p99_s=0.1 * r, tpot_p99_ms=10 * r) for r in (1, 2, 4, 8)]
    p = make_profile(curve=curve)
    assert p.at_slo(2.0, 45.0).cells[0].max_rps == 4  # 8 req/s breaks TPOT 45 ms
    assert p.at_slo(0.15, 500.0).cells[0].max_rps == 1
    no_curve = make_profile(slo=(1.0, 80.0))
    assert no_curve.at_slo(2.0, 120.0) is no_curve  # measured stricter: still valid
    assert no_curve.at_slo(2.0, 50.0) is None  # measured looser: cannot answer


def test_curve_rate_not_sustained_counts_as_broken():
    c = Cell(input_tokens=(1, 1), output_tokens=(1, 1), max_rps=0, curve=[
        CurvePoint(rate_rps=1, achieved_rps=1, ttft_p99_s=0.1, tpot_p99_ms=10),
        CurvePoint(rate_rps=4, achieved_rps=2.5, ttft_p99_s=0.1, tpot_p99_ms=10),
        CurvePoint(rate_rps=8, achieved_rps=8, ttft_p99_s=0.1, tpot_p99_ms=10)])
    assert c.max_rps_at(2.0, 120.0) == 1  # stops at the first broken point, never skips over it


def test_capacity_table_prefers_config_then_measured_then_imported_then_estimates(tmp_path):
    save_profile(make_profile(kind="imported", values=[[1, 1], [1, 1], [1, 1]]), tmp_path)
    save_profile(make_profile(kind="measured", values=[[30, 9], [7, 3], [2, 1]]), tmp_path)
    rep = build_capacity(cfg(), tmp_path)
    assert rep.kinds[("chat", "A10Gx1")] == "measured"
    assert rep.table.provenance[("chat", "A10Gx1")].startswith("measured: test-measured")
    assert rep.table.get("chat", "A10Gx1")[0][0] == 30
    # L4 has no profile: estimated and flagged
    assert rep.kinds[("chat", "L4x1")] == "estimated"
    assert rep.table.provenance[("chat", "L4x1")].startswith("estimated:")
    assert any(w["event"] == "capacity.estimated" and w["gpu"] == "L4" for w in rep.warnings)
    # config tables beat everything
    c = cfg(capacity=[{"model": "meta-llama/Llama-2-7b-hf", "gpu": "A10G", "tputs": [[5, 5], [5, 5], [5, 5]],
                       "source": "ops"}])
    rep2 = build_capacity(c, tmp_path)
    assert rep2.kinds[("chat", "A10Gx1")] == "config" and rep2.table.get("chat", "A10Gx1")[0][0] == 5


def test_uncovered_cells_are_estimated_and_scaled_to_the_profile(tmp_path):
    save_profile(make_profile(kind="measured"), tmp_path)
    rep = build_capacity(cfg(), tmp_path)
    m = rep.table.get("chat", "A10Gx1")
    assert m[0][0] == 20.0 and m[0][1] > 0  # the 64-256 output bucket was beyond the profile: estimated
    assert "cells estimated" in rep.table.provenance[("chat", "A10Gx1")]
    assert any(w["event"] == "capacity.partly_estimated" for w in rep.warnings)


def test_newest_profile_of_a_kind_wins_and_looser_slo_profile_is_skipped(tmp_path):
    save_profile(make_profile(values=[[11, 1], [1, 1], [1, 1]], created=T0), tmp_path, "old")
    save_profile(make_profile(values=[[22, 1], [1, 1], [1, 1]], created=T0.replace(month=9)), tmp_path, "new")
    save_profile(make_profile(gpu="L4", slo=(2.0, 400.0)), tmp_path, "l4loose")
    rep = build_capacity(cfg(), tmp_path)
    assert rep.table.get("chat", "A10Gx1")[0][0] == 22
    assert any(w["event"] == "capacity.profile_skipped" and w["gpu"] == "L4" for w in rep.warnings)
    assert rep.kinds[("chat", "L4x1")] == "estimated"


def test_unknown_gpu_is_excluded_with_a_warning_and_estimates_can_be_switched_off(tmp_path):
    c = cfg(services=[{"name": "chat", "model": "meta-llama/Llama-2-7b-hf", "gpus": ["A10G", "TPU-v5e"]}])
    rep = build_capacity(c, tmp_path)
    assert rep.table.pools("chat") == ["A10Gx1"]
    ex = [w for w in rep.warnings if w["event"] == "capacity.excluded"]
    assert ex and ex[0]["gpu"] == "TPU-v5e" and "unknown GPU" in ex[0]["reason"]
    off = cfg(profiles={"estimate_missing": False})
    rep2 = build_capacity(off, tmp_path)
    assert rep2.table.pools("chat") == []
    assert {w["gpu"] for w in rep2.warnings if w["event"] == "capacity.excluded"} == {"A10G", "L4"}


def test_bigger_model_gets_a_multi_gpu_pool(tmp_path):
    c = cfg(services=[{"name": "big", "model": "meta-llama/Llama-2-70b-hf", "gpus": ["A100-80GB", "A10G"]}])
    rep = build_capacity(c, tmp_path)
    assert rep.table.pools("big") == ["A100-80GBx2", "A10Gx8"]


def test_capacity_table_entry_point_with_defaults_uses_config_tables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./profiles here
    from daemon.config import default_config

    t = capacity_table(default_config())
    assert set(t.pools("chat")) == {"A10Gx1", "L4x1", "A100-80GBx1", "H100x1"}


def test_cells_without_curves_in_a_curved_profile_need_a_stricter_slo():
    p = make_profile(slo=(2.0, 200.0))
    curved = p.cells[0].model_copy(update={"curve": [CurvePoint(rate_rps=3, achieved_rps=3, ttft_p99_s=0.1,
                                                                tpot_p99_ms=50)]})
    mixed = p.model_copy(update={"cells": [curved, *p.cells[1:]]})
    at = mixed.at_slo(2.0, 120.0)
    assert at.cells[0].max_rps == 3 and all(c.max_rps == 0 for c in at.cells[1:])


def test_estimates_warn_when_buckets_exceed_the_model_context(tmp_path):
    rep = build_capacity(cfg(buckets={"input_edges": [0, 1024, 8192], "output_edges": [0, 256]}), tmp_path)
    assert any(w["event"] == "capacity.beyond_context" for w in rep.warnings)
    assert not any(w["event"] == "capacity.beyond_context" for w in build_capacity(cfg(), tmp_path).warnings)


def test_prompts_beyond_max_model_len_get_no_capacity_from_any_source(tmp_path):
    grid = {"input_edges": [0, 1024, 4096, 8192, 16384], "output_edges": [0, 256, 1024]}  # rows from 0, 1k, 4k, 8k
    svc = {"name": "chat", "model": "meta-llama/Llama-3.1-8B-Instruct", "gpus": ["A10G", "H100"],
           "max_model_len": 8192}
    table = [[5.0, 5.0]] * 4
    rep = build_capacity(cfg(buckets=grid, services=[svc], capacity=[
        {"model": svc["model"], "gpu": "A10G", "tputs": table}]), tmp_path)
    assert rep.table.get("chat", "A10Gx1")[2:] == ((5.0, 5.0), (0.0, 0.0))  # a config table too
    h100 = rep.table.get("chat", "H100x1")
    assert h100[2][0] > 0 and h100[3] == (0.0, 0.0)  # the estimate
    # max_model_len above the model's own context is capped by it (Llama 2: 4096 tokens).
    old = dict(svc, model="meta-llama/Llama-2-7b-hf", max_model_len=16384)
    h100 = build_capacity(cfg(buckets=grid, services=[old]), tmp_path).table.get("chat", "H100x1")
    assert h100[1][0] > 0 and h100[2] == h100[3] == (0.0, 0.0)
