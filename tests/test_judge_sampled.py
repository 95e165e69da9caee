"""The window-sampled judge: the same model on a sample of windows, scaled up."""

import numpy as np
import pytest

from daemon.config import BucketConfig
from daemon.judge import JudgeInputs, ReplicaSpan, Requests, ServiceSpec, judge
from daemon.judge.sampled import judge_sampled

GRID = BucketConfig().grid()
SVC = {"chat": ServiceSpec("chat", "meta-llama/Llama-2-7b-hf", ttft_slo_s=2.0, tpot_slo_ms=120.0)}


def _inputs(hours=8, seed=3):
    rng = np.random.default_rng(seed)
    span = hours * 3600.0
    # A rate that swings between quiet and more than two A10Gs can carry at its peak, so attainment varies by window.
    t = np.sort(rng.uniform(0, span, int(1.0 * span)))
    keep = rng.random(t.size) < 0.5 + 0.5 * np.sin(2 * np.pi * t / 7200.0)
    t = t[keep]
    n = t.size
    rq = Requests.build(t, rng.integers(100, 2000, n), rng.integers(10, 300, n), "chat")
    fleet = (ReplicaSpan("a", "chat", "A10Gx1", "A10G", 1, "on-demand", "aws", -60.0, None),
             ReplicaSpan("b", "chat", "A10Gx1", "A10G", 1, "spot", "aws", -60.0, 4 * 3600.0, preempted=True,
                         notice_s=120.0))
    return JudgeInputs(rq, fleet, (), GRID, SVC)


def test_stride_one_is_the_full_judge():
    inputs = _inputs(hours=2)
    full = judge(inputs)
    sv = judge_sampled(inputs, stride=1, window_s=1800.0)
    assert sv.counted.all() and sv.summary()["judged_requests"] == len(inputs.requests)
    assert sv.attainment()[0] == pytest.approx(full.attainment(), abs=1e-12)


def test_sampled_estimate_is_near_the_full_judge():
    inputs = _inputs()
    full = judge(inputs).attainment()
    assert 0.6 < full < 0.95  # a workload where windows differ
    ests = [judge_sampled(inputs, stride=2, window_s=1800.0, warmup_s=600.0, offset=k) for k in (0, 1)]
    for sv in ests:
        est, se = sv.attainment()
        assert se > 0 and abs(est - full) < max(4 * se, 0.05)
        assert 0.4 < sv.summary()["judged_requests"] / len(inputs.requests) < 0.75
    # The two halves cover every window once: their request-weighted mean is the full figure.
    n = [sv.counted.sum() for sv in ests]
    both = sum(sv.attainment()[0] * k for sv, k in zip(ests, n)) / sum(n)
    assert both == pytest.approx(full, abs=0.02)


def test_bad_arguments():
    inputs = _inputs(hours=1)
    with pytest.raises(ValueError, match="stride"):
        judge_sampled(inputs, stride=0)
