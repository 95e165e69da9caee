"""The analytical estimator: physics it must respect and every built-in chip/model it must cover."""

import math

import pytest

from daemon.capacity.estimator import (EstimateError, estimate_profile, make_replica, max_rps, smallest_tp,
                                       steady_state)
from daemon.capacity.hardware import GPUS, canonical_gpu, gpu_spec
from daemon.capacity.models import MODELS, canonical_model, model_arch

BACKGROUND_CHIPS = ["H800", "A800", "H20", "L20", "A10", "A30", "V100", "Ascend-910B", "Enflame-S60", "Kunlun-XPU2"]
CLOUD_GPUS = ["T4", "L4", "A10G", "A10", "L40S", "A100-40GB", "A100-80GB", "H100", "H200"]


def test_every_required_chip_and_model_has_a_sourced_spec():
    for name in BACKGROUND_CHIPS + CLOUD_GPUS:
        spec = gpu_spec(name)
        assert spec.source and spec.efficiency_source
        assert spec.fp16_tflops > 0 and spec.memory_gb > 0 and spec.bandwidth_gbs > 0
    for m in ["Llama-2-7B", "Llama-2-13B", "Llama-2-70B", "Llama-3-8B", "Llama-3-70B", "Qwen-72B", "Mistral-7B"]:
        assert model_arch(m).source.startswith("hf:")


def test_background_table_figures_are_the_ones_used():
    # BACKGROUND §4: dense FP16 TFLOPS / memory GB / bandwidth GB/s
    expect = {"H800": (989, 80, 3350), "A800": (312, 80, 2039), "H20": (148, 96, 4000), "L20": (119.5, 48, 864),
              "A10": (125, 24, 600), "A30": (165, 24, 933), "V100": (125, 32, 900), "Ascend-910B": (376, 64, 1600),
              "Enflame-S60": (160, 64, 1800), "Kunlun-XPU2": (128, 32, 512)}
    for name, (tf, mem, bw) in expect.items():
        s = GPUS[name]
        assert (s.fp16_tflops, s.memory_gb, s.bandwidth_gbs) == (tf, mem, bw)


def test_parameter_counts_match_the_published_sizes():
    assert model_arch("Llama-2-7B").params == pytest.approx(6.74e9, rel=0.01)
    assert model_arch("Llama-2-13B").params == pytest.approx(13.0e9, rel=0.01)
    assert model_arch("Llama-2-70B").params == pytest.approx(69.0e9, rel=0.01)
    assert model_arch("Llama-3-8B").params == pytest.approx(8.03e9, rel=0.01)
    assert model_arch("Qwen-72B").params == pytest.approx(72.3e9, rel=0.02)


def test_name_aliases():
    assert canonical_model("meta-llama/Llama-2-7b-chat-hf") == "Llama-2-7B"
    assert canonical_model("llama2-7b") == "Llama-2-7B"
    assert canonical_model("meta-llama/Meta-Llama-3-70B-Instruct") == "Llama-3-70B"
    assert canonical_model("mistralai/Mistral-7B-Instruct-v0.2") == "Mistral-7B"
    assert canonical_model("gpt-4") is None
    assert canonical_gpu("a100-80gb") == "A100-80GB" and canonical_gpu("910B") == "Ascend-910B"


def test_decode_step_is_bounded_by_reading_the_weights_background_l20_example():
    """BACKGROUND §4: a 13B fp16 model (~24 GB) on one L20 (864 GB/s) needs >= ~28 ms per step; TP=2 ~14 ms."""
    one = make_replica("Llama-2-13B", "L20", 1)
    two = make_replica("Llama-2-13B", "L20", 2)
    t1 = one.iteration_time(1, 1, 512)
    t2 = two.iteration_time(1, 1, 512)
    assert t1 >= one.weight_bytes / 864e9
    assert 0.028 <= t1 <= 0.045
    assert 0.45 * t1 <= t2 <= 0.7 * t1  # TP halves the bytes per GPU, communication eats a little back


def test_fp8_halves_the_weight_bytes_and_the_decode_step():
    bf16 = make_replica("Llama-3-8B", "H100", 1, "bf16")
    fp8 = make_replica("Llama-3-8B", "H100", 1, "fp8")
    assert fp8.weight_bytes == pytest.approx(bf16.weight_bytes / 2)
    assert fp8.iteration_time(1, 1, 0) < 0.7 * bf16.iteration_time(1, 1, 0)
    assert fp8.kv_capacity_tokens > bf16.kv_capacity_tokens


def test_smallest_replica_shapes_match_background_suggestions():
    assert smallest_tp("Llama-2-7B", "A10G") == 1
    assert smallest_tp("Llama-2-70B", "A100-80GB") == 2
    assert smallest_tp("Qwen-72B", "L20") == 4  # BACKGROUND §4: 65-72B on 4x L20 in FP16...
    assert smallest_tp("Qwen-72B", "L20", "fp8") == 2  # ...or 2x in FP8
    assert smallest_tp("Llama-2-70B", "T4") is None
    with pytest.raises(EstimateError, match="unknown GPU"):
        smallest_tp("Llama-2-7B", "NoSuchGPU")


def test_gqa_models_hold_far_more_tokens_than_mha_ones():
    mha = make_replica("Qwen-72B", "H100", 4)
    gqa = make_replica("Qwen2-72B", "H100", 4)
    assert gqa.kv_capacity_tokens > 5 * mha.kv_capacity_tokens


def test_capacity_falls_with_request_size_and_rises_with_a_looser_slo():
    p = estimate_profile("Llama-2-7B", "A100-80GB", 1, ttft_s=2.0, tpot_ms=120.0, curves=False)
    grid = [[c.max_rps for c in p.cells[i * 4:(i + 1) * 4]] for i in range(4)]
    # Longer answers cost more from 64 output tokens on (within 1%: the step queue is discrete).
    # The shortest answers are not the cheapest: their p99 TPOT is one or two steps, and a
    # step that carries prompts is long (chunked prefill's TPOT spikes), so with long prompts
    # the 0-64 column may sit below the next one.
    for row in grid:
        assert all(b <= a * 1.01 for a, b in zip(row[1:], row[2:]))
    assert grid[2][0] < grid[2][1]  # 1024-4096-token prompts: short answers are TPOT-bound
    for col in range(4):
        assert all(grid[i + 1][col] <= grid[i][col] for i in range(3))
    tight = estimate_profile("Llama-2-7B", "A100-80GB", 1, ttft_s=2.0, tpot_ms=30.0, curves=False)
    assert all(t.max_rps <= l.max_rps + 1e-9 for t, l in zip(tight.cells, p.cells))
    assert sum(t.max_rps for t in tight.cells) < sum(l.max_rps for l in p.cells)


def test_bigger_chip_more_capacity():
    a = estimate_profile("Llama-2-7B", "A100-80GB", 1, curves=False)
    h = estimate_profile("Llama-2-7B", "H100", 1, curves=False)
    assert all(y.max_rps >= x.max_rps for x, y in zip(a.cells, h.cells))


def test_steady_state_at_the_max_meets_the_slo_and_just_above_breaks_it():
    rep = make_replica("Llama-2-7B", "L4", 1)
    v, reason = max_rps(rep, (256, 1024), (64, 256), 2.0, 120.0)
    assert v > 0 and reason
    at = steady_state(rep, v, 640, 160, 1024, 2.0, 120.0)
    above = steady_state(rep, v * 1.05, 640, 160, 1024, 2.0, 120.0)
    assert at.ok and at.tpot_ms <= 120.0 and at.ttft_p99_s <= 2.0
    assert not above.ok


def test_curve_shows_latency_rising_with_rate():
    p = estimate_profile("Llama-3-8B", "H100", 1, ttft_s=2.0, tpot_ms=120.0)
    cell = p.cells[5]
    tpots = [pt.tpot_p99_ms for pt in cell.curve]
    assert len(tpots) >= 4 and all(b >= a for a, b in zip(tpots, tpots[1:]))
    assert cell.max_rps_at(2.0, 120.0) == pytest.approx(cell.max_rps, rel=0.01)


@pytest.mark.parametrize("gpu", BACKGROUND_CHIPS + CLOUD_GPUS)
def test_every_chip_estimates_a_7b_model(gpu):
    tp = smallest_tp("Llama-2-7B", gpu)
    assert tp is not None
    p = estimate_profile("Llama-2-7B", gpu, tp, curves=False)
    assert p.provenance.kind == "estimated"
    assert p.cells[0].max_rps > 0  # short chat is servable on every chip
    assert all(math.isfinite(c.max_rps) and c.max_rps >= 0 for c in p.cells)


def test_model_that_does_not_fit_is_an_error_not_a_zero_table():
    with pytest.raises(EstimateError, match="does not fit"):
        estimate_profile("Llama-2-70B", "A10G", 1)
    with pytest.raises(EstimateError, match="unknown model"):
        estimate_profile("NoSuchModel-3B", "A10G", 1)
    with pytest.raises(EstimateError, match="tp=3"):
        make_replica("Llama-2-7B", "A10G", 3)
    assert set(MODELS) >= {"Llama-2-7B", "Mistral-7B"}
