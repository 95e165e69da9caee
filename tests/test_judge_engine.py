"""The judge's per-replica engine: step times, queueing, chunked prefill, the KV cache, context limits."""

import math

import numpy as np
import pytest

from daemon.capacity.estimator import make_replica
from daemon.config import BucketConfig
from daemon.judge import (JudgeInputError, JudgeInputs, JudgeOptions, ReplicaSpan, Requests, ServiceSpec,
                          judge)
from daemon.judge.engine import kv_cache_tokens
from daemon.judge.steptime import StepTimeError, StepTimes, step_times

GRID = BucketConfig().grid()
MODEL = "meta-llama/Llama-2-7b-hf"
SVC = {"chat": ServiceSpec("chat", MODEL, ttft_slo_s=2.0, tpot_slo_ms=120.0)}


def replica(name="r0", gpu="A10G", ready=0.0, end=None, **kw):
    return ReplicaSpan(name, "chat", f"{gpu}x1", gpu, 1, kw.pop("market", "on-demand"), kw.pop("cloud", "aws"),
                       ready, end, **kw)


def run(t, inp, out, fleet, services=SVC, **opts):
    rq = Requests.build(t, inp, out, "chat")
    return judge(JudgeInputs(rq, tuple(fleet), (), GRID, services), JudgeOptions(**opts))


def poisson(rate, n, seed=1):
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))


# ---- the shared step-time model -----------------------------------------------------------------


def test_step_table_is_the_estimators_iteration_time():
    rep = make_replica(MODEL, "H100")
    st = step_times(MODEL, "H100", 1, "bf16", "vllm-v1")
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, s = int(rng.integers(0, st.max_tokens + 1)), int(rng.integers(0, st.max_seqs + 1))
        kv, pa = float(rng.uniform(0, 3e6)), float(rng.uniform(0, 5e7))
        assert st.time(n, s, kv, pa) == pytest.approx(rep.iteration_time(n, s, kv, pa), rel=1e-12)
    assert st.max_tokens == rep.engine.max_batched_tokens == 8192  # V1 on an 80 GB Hopper


def test_step_table_refuses_a_model_that_stops_being_separable():
    rep = make_replica(MODEL, "A10G")

    class Coupled(type(rep)):
        def iteration_time(self, n_tok, seqs, kv_tokens, prefill_attn=0.0):
            return super().iteration_time(n_tok, seqs, kv_tokens, prefill_attn) * (1 + 1e-4 * seqs * n_tok / 100)

    with pytest.raises(StepTimeError, match="no longer a sum"):
        StepTimes.build(Coupled(rep.arch, rep.gpu, rep.tp, rep.dtype, rep.engine))


# ---- a lone request ---------------------------------------------------------------------------


@pytest.mark.parametrize("gpu,inp", [("A10G", 1000), ("A10G", 3500), ("H100", 3000)])
def test_lone_request_ttft_and_tpot_are_the_step_time_models(gpu, inp):
    out = 60
    rep = make_replica(MODEL, gpu)
    budget = rep.engine.max_batched_tokens
    # Prefill: chunks of the token budget, each attending to everything before it; the last samples.
    ttft, done = 0.0, 0
    while done < inp:
        c = min(budget, inp - done)
        attn = 0.5 * ((done + c) * (done + c + 1) - done * (done + 1))
        ttft += rep.iteration_time(c, 1 if done + c == inp else 0, 0, attn)
        done += c
    # Decode: one token per step, reading the growing context.
    decode = [rep.iteration_time(1, 1, inp + m, 0) for m in range(out - 1)]
    v = run([50.0], [inp], [out], [replica(gpu=gpu)])
    assert v.status[0] == 0
    assert v.ttft_s[0] == pytest.approx(ttft, rel=1e-9)
    assert v.tpot_s[0] == pytest.approx(sum(decode) / (out - 1), rel=1e-9)
    assert v.e2e_s[0] == pytest.approx(ttft + sum(decode), rel=1e-9)
    assert bool(v.meets_slo[0])


def test_one_token_answer_has_no_tpot_and_meets_on_ttft():
    v = run([1.0], [200], [1], [replica()])
    assert v.status[0] == 0 and math.isnan(v.tpot_s[0]) and v.e2e_s[0] == pytest.approx(v.ttft_s[0])
    assert bool(v.meets_slo[0])


# ---- load -------------------------------------------------------------------------------------


def test_queueing_grows_ttft_with_load():
    rng = np.random.default_rng(7)
    n = 1500
    inp, out = rng.integers(300, 1000, n), rng.integers(20, 200, n)
    p50, p99 = [], []
    for rate in (0.2, 1.0, 2.0, 3.0):
        v = run(poisson(rate, n), inp, out, [replica()])
        assert (v.status == 0).all()
        p50.append(np.percentile(v.ttft_s, 50))
        p99.append(np.percentile(v.ttft_s, 99))
    assert p50 == sorted(p50) and p99 == sorted(p99)
    assert p99[-1] > 5 * p99[0]  # an overloaded replica queues for far longer than a quiet one


def test_batching_shares_decode_steps_so_tpot_grows_slowly():
    # Ten requests at once on an H100: decoded together, each step costs little more than alone.
    alone = run([0.0], [500], [200], [replica(gpu="H100")]).tpot_s[0]
    together = run([0.0] * 10, [500] * 10, [200] * 10, [replica(gpu="H100")]).tpot_s
    assert together.max() < 1.5 * alone
    assert together.min() > alone  # but not free


def test_closed_form_decode_equals_stepping_every_iteration():
    rng = np.random.default_rng(5)
    n = 1500
    t = poisson(2.5, n)
    inp, out = rng.integers(50, 3000, n), rng.integers(1, 1000, n)
    fleet = [replica("r0"), replica("r1", ready=10.0, end=300.0, market="spot", preempted=True),
             replica("r2", gpu="L4", ready=30.0)]
    a = run(t, inp, out, fleet)
    b = run(t, inp, out, fleet, closed_form=False)
    assert a.kv_preemptions > 0 and (a.retries > 0).any()  # the comparison covers recompute and loss
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.replica, b.replica)
    np.testing.assert_array_equal(a.recomputes, b.recomputes)
    for f in ("ttft_s", "tpot_s", "e2e_s"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-9, equal_nan=True)


# ---- the KV cache -------------------------------------------------------------------------------


def test_kv_cache_size_follows_vllm_memory_profiling():
    rep = make_replica(MODEL, "A10G")
    kv = kv_cache_tokens(rep)
    # 24 GB x 0.9 - 1.5 GB reserve - 13.5 GB of bf16 weights, over 0.5 MiB per token of fp16 K+V (32 layers).
    per_token = 2 * 32 * 32 * 128 * 2
    want = (24e9 * 0.9 - 1.5e9 - rep.arch.params * 2) / per_token
    assert kv % 16 == 0 and want - 16 < kv <= want
    assert kv_cache_tokens(make_replica(MODEL, "H100")) > 8 * kv


def test_kv_limit_preempts_and_recomputes():
    # 12 long requests at once on an A10G (~12.6k tokens of cache): admitted while prompts fit,
    # then the growing decodes overflow the cache and the newest are preempted and recomputed.
    n = 12
    v = run([0.0] * n, [2000] * n, [1500] * n, [replica()])
    assert (v.status == 0).all()
    assert v.kv_preemptions > 0 and v.recomputes.sum() > 0
    hit = v.recomputes > 0
    assert v.e2e_s[hit].mean() > v.e2e_s[~hit].mean()
    # The same burst on an H100 (10x the cache) never runs out.
    h = run([0.0] * n, [2000] * n, [1500] * n, [replica(gpu="H100")])
    assert h.kv_preemptions == 0 and h.recomputes.sum() == 0


def test_growing_decodes_preempt_the_newest_sequence():
    # Five prompts fit the A10G's cache together (5 x 1000 tokens), their answers do not (5 x 4000):
    # as the decodes grow the newest sequence is preempted, recomputed later, and finishes last.
    v = run([0.0, 0.1, 0.2, 0.3, 0.4], [1000] * 5, [3000] * 5, [replica()])
    assert (v.status == 0).all() and v.kv_preemptions > 0
    assert v.recomputes[0] == 0 and v.recomputes[-1] > 0  # FCFS: the oldest is never the victim
    assert np.argmax(v.e2e_s + v.requests.arrival_s) == 4


def test_engine_settings_are_the_services():
    from dataclasses import replace

    from daemon.capacity.estimator import VLLM_V1

    small = {"chat": ServiceSpec("chat", MODEL, 2.0, 120.0, engine=replace(VLLM_V1, max_num_seqs=8))}
    v = run([0.0] * 20, [20] * 20, [100] * 20, [replica(gpu="H100")], services=small)
    assert (np.sort(v.ttft_s)[8:] > np.sort(v.ttft_s)[7] + 0.1).all()  # only 8 run at once


def test_max_num_seqs_caps_the_batch():
    # 400 tiny requests at once on an H100: at most 256 run, the rest queue.
    v = run([0.0] * 400, [20] * 400, [100] * 400, [replica(gpu="H100")])
    first = np.sort(v.ttft_s)
    assert (v.status == 0).all()
    assert first[255] < 1.0 < first[300]  # the 257th waits for a slot to free up


# ---- context -----------------------------------------------------------------------------------


def test_request_past_max_model_len_is_refused():
    v = run([0.0, 1.0, 2.0], [4000, 3000, 100], [200, 1000, 10], [replica()])
    assert v.status.tolist() == [1, 0, 0]  # 4200 > Llama-2-7B's 4096; 4000 and 110 fit
    assert not v.meets_slo[0] and math.isnan(v.ttft_s[0]) and v.replica[0] == -1
    assert v.summary()["failed"]["context"] == 1
    # max_model_len shortens the context; it cannot lengthen it (vLLM refuses a longer max_model_len).
    shorter = {"chat": ServiceSpec("chat", MODEL, 2.0, 120.0, max_model_len=2048)}
    assert run([0.0, 1.0], [1000, 2000], [500, 100], [replica()], services=shorter).status.tolist() == [0, 1]
    longer = {"chat": ServiceSpec("chat", MODEL, 2.0, 120.0, max_model_len=8192)}
    assert run([0.0], [4000], [200], [replica()], services=longer).status[0] == 1


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_inputs_name_the_field():
    with pytest.raises(JudgeInputError, match="output_tokens"):
        Requests.build([0.0, 1.0], [10, 10], [5, 0], "chat")
    with pytest.raises(JudgeInputError, match="r9: end_at"):
        replica("r9", ready=10.0, end=5.0)
    with pytest.raises(JudgeInputError, match="r0.*Nope"):
        run([0.0], [10], [10], [replica(gpu="Nope")])
    with pytest.raises(JudgeInputError, match="no ServiceSpec"):
        JudgeInputs(Requests.build([0.0], [1], [1], "other"), (), (), GRID, SVC)
