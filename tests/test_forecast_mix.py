"""Size mix: input shares, output conditional on input, forgetting, shift detection (on real Azure traces)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from daemon.domain import BucketGrid, DemandWindow
from forecast.mix import MixConfig, estimate_mix, is_unknown, mix_tv
from daemon.demand.request_log import RequestRow, scan
from daemon.demand.windows import windows_from_rows

AZURE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces" / "azure_llm_2023"
GRID = BucketGrid((0, 256, 1024, 4096, 16384), (0, 64, 256, 1024, 4096))
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def win(minute: int, counts) -> DemandWindow:
    return DemandWindow("s", T0 + timedelta(minutes=minute), 60.0, tuple(tuple(map(float, r)) for r in counts))


def test_joint_is_input_share_times_output_given_input():
    wins = [win(m, [[30, 10], [0, 60]]) for m in range(10)]
    est = estimate_mix(wins, T0 + timedelta(minutes=10), MixConfig(prior_requests=0.0))
    assert est.input_share == pytest.approx((0.4, 0.6))
    assert np.asarray(est.output_given_input) == pytest.approx(np.array([[0.75, 0.25], [0.0, 1.0]]))
    assert np.asarray(est.joint) == pytest.approx(np.array([[0.3, 0.1], [0.0, 0.6]]))
    assert not est.shift


def test_sparse_rows_shrink_towards_the_pooled_output_mix():
    wins = [win(m, [[0, 100], [0, 0]]) for m in range(10)] + [win(10, [[0, 0], [1, 0]])]
    est = estimate_mix(wins, T0 + timedelta(minutes=11), MixConfig(prior_requests=20.0))
    row = est.output_given_input[1]
    # one request said "output bucket 0"; 20 pseudo-counts of the pooled mix (~all bucket 1) say otherwise
    assert row[1] > 0.8 and sum(row) == pytest.approx(1.0)


def test_forgetting_weights_recent_windows():
    old = [win(m, [[100, 0], [0, 0]]) for m in range(0, 60)]
    new = [win(m, [[0, 0], [0, 100]]) for m in range(600, 660)]
    now = T0 + timedelta(minutes=660)
    est = estimate_mix(old + new, now, MixConfig(half_life_s=3600.0, short_half_life_s=600.0, shift_tv=1.1))
    # old windows are ~10 hours old: weight 2^-10
    assert est.joint[1][1] > 0.99
    # windows not yet finished at `now` are ignored
    assert estimate_mix(old, T0 + timedelta(minutes=0.5)).effective_requests == 0


def test_unknown_mix_is_all_zero():
    est = estimate_mix([win(0, [[0, 0], [0, 0]])], T0 + timedelta(minutes=5))
    assert is_unknown(est.joint) and est.effective_requests == 0


def _azure_windows(name: str, shift_s: float) -> list[DemandWindow]:
    path = AZURE / f"AzureLLMInferenceTrace_{name}.csv.xz"
    if not path.exists():
        pytest.skip(f"shared data missing: {path}")
    rows = scan(path, "azure").rows
    moved = [RequestRow(r.timestamp + shift_s, r.input_tokens, r.output_tokens, r.line) for r in rows]
    return windows_from_rows(moved, GRID, 60.0, "chat")


def test_shift_detected_when_conversation_traffic_turns_into_code_traffic():
    conv = _azure_windows("conv", 0.0)
    conv_end = conv[-1].start.timestamp() + 60
    code0 = _azure_windows("code", 0.0)
    # place the code hour right after the conversation hour, as if the service's users changed
    offset = conv_end - code0[0].start.timestamp()
    code = [DemandWindow(w.service, w.start + timedelta(seconds=offset), w.seconds, w.counts, w.input_tokens,
                         w.output_tokens) for w in code0]
    cfg = MixConfig(half_life_s=6 * 3600.0, short_half_life_s=600.0)
    during_conv = estimate_mix(conv, conv_end, cfg)
    assert not during_conv.shift
    t = code[0].start.timestamp() + 1800
    after = estimate_mix(conv + code, t, cfg)
    assert after.shift and after.memory == "short"
    code_only = estimate_mix([w for w in code if w.start.timestamp() + 60 <= t], t, MixConfig(shift_tv=2.0))
    # the shifted estimate is the new (code) mix, not the long-memory blend
    # (the short memory still holds some of the last conversation minutes)
    assert mix_tv(after.joint, code_only.joint) < 0.5 * mix_tv(after.joint, during_conv.joint)
    assert mix_tv(after.joint, during_conv.joint) > 0.2
    # the code trace: long prompts with short answers (DATA-README: input p50 1469, output p50 13)
    assert after.output_given_input[2][0] > 0.6


def test_snapshot_carried_forward_equals_reading_every_window():
    from forecast.mix import mix_snapshot

    rng = np.random.default_rng(2)
    wins = [win(m, rng.poisson(5, (2, 2))) for m in range(600)]
    cfg = MixConfig(half_life_s=3600.0, short_half_life_s=600.0)
    snap = mix_snapshot(wins[:500], T0 + timedelta(minutes=500), cfg)
    now = T0 + timedelta(minutes=600)
    full = estimate_mix(wins, now, cfg)
    carried = estimate_mix(wins[500:], now, cfg, snapshot=snap)  # only the windows after the snapshot
    assert np.allclose(np.asarray(carried.joint), np.asarray(full.joint), atol=1e-12)
    assert carried.effective_requests == pytest.approx(full.effective_requests)
    assert carried.tv_distance == pytest.approx(full.tv_distance) and carried.shift == full.shift
    # a snapshot made with other half-lives is not used (the full read is)
    other = estimate_mix(wins, now, MixConfig(), snapshot=snap)
    assert np.allclose(np.asarray(other.joint), np.asarray(estimate_mix(wins, now, MixConfig()).joint))


def test_mismatched_bucket_grids_are_a_clear_error():
    with pytest.raises(ValueError, match="disagree on the bucket grid"):
        estimate_mix([win(0, [[1, 2], [3, 4]]), win(1, [[1, 2, 3], [4, 5, 6]])], T0 + timedelta(minutes=5))


def test_mix_errors_on_known_numbers():
    from forecast.mix_backtest import mix_errors, shares_from_quantiles

    true = np.array([[30.0, 10.0], [0.0, 60.0]])
    pred_joint = np.array([[0.3, 0.1], [0.0, 0.6]])
    pred_cond = np.array([[0.75, 0.25], [0.0, 1.0]])
    assert mix_errors(pred_joint, pred_cond, true) == pytest.approx((0.0, 0.0, 0.0))
    # all mass on input 0, with output split 50/50 everywhere
    i, o, j = mix_errors(np.array([[0.5, 0.5], [0.0, 0.0]]), np.array([[0.5, 0.5], [0.5, 0.5]]), true)
    assert i == pytest.approx(0.6)  # input shares (1, 0) vs (0.4, 0.6)
    assert o == pytest.approx(0.4 * 0.25 + 0.6 * 0.5)  # |.5-.75|, |.5-1| weighted by the true input shares
    sh = shares_from_quantiles((0, 256, 1024, 4096), 200, 900, 3000)
    assert sh.sum() == pytest.approx(1.0) and np.all(sh >= 0)
    assert sh[0] == pytest.approx(0.5 + 0.4 * (np.log(256 / 200) / np.log(900 / 200)))


def test_estimate_mix_beats_the_last_window_on_the_bursty_code_trace():
    from forecast.mix_backtest import evaluate_mix

    code = _azure_windows("code", 0.0)
    r = evaluate_mix(code, 300.0, 300.0, first_origin_s=code[0].start_s + 600)
    est, last = r["estimate_mix"].summary(), r["last_window"].summary()
    assert est["n"] == last["n"] > 30
    # one-minute windows of a bursty trace are noisy: pooling them is far better (bench: 0.049 vs 0.123)
    assert est["input_tv"] < 0.6 * last["input_tv"] and est["joint_tv"] < 0.6 * last["joint_tv"]
