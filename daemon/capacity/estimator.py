"""Analytical MaxTput of one replica under continuous batching (vLLM-style, chunked prefill).

Why analytical: the planner must be able to price a GPU type nobody has rented
yet (seed 001's H20, L20, 910B...). The model is a roofline per GEMM, calibrated
on measured per-operator timings (Vidur), assembled into an engine iteration:

  iteration(n_tok tokens, B decoding sequences, K cached tokens read)
    = L * [ linear GEMMs(n_tok) * (1 + misc) + KV reads(K)/L + prefill attention + 2 all-reduces ]
      + LM head(B) + engine overhead(B)

  - a GEMM reads its weights once per iteration (bandwidth-bound at small n_tok)
    and does 2*m*k*n FLOPs (compute-bound at large n_tok); see hardware.Efficiency;
  - decode attention reads every cached K/V byte of the batch (bandwidth);
  - prefill attention is 4 * tokens * context * head_dim * heads FLOPs (causal: half);
  - tensor parallelism splits weights and heads across `tp` GPUs and adds two ring
    all-reduces of n_tok x hidden activations per layer (Megatron-LM layout);
  - "misc" (norms, rotary, activation, residual adds) is 10% of the linear time:
    Vidur's A100 Llama-2-7B data gives 8.8% median over num_tokens 1..4096 with one
    residual add recorded, two happen per layer.

Steady state at an offered rate lam for requests of I prompt and O output tokens
(Little's law on iterations of length t): B = lam*O*t sequences decode in each
iteration and p = lam*I*t prompt tokens are prefilled alongside (chunked prefill),
so t solves t = iteration(B + p, B, B*(I + O/2)). TPOT is t; TTFT is queueing for
the prefill budget (M/M/1 tail, conservative against Poisson arrivals) plus the
chunks of the largest prompt in the bucket. The largest lam meeting TPOT, TTFT,
the KV-cache capacity (B*(I+O) tokens resident), max_num_seqs and the token
budget is MaxTput. Limits: mean-field (no iteration-to-iteration variance), no
prefix caching, no speculative decoding, dense models only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

from daemon.capacity.hardware import GpuSpec, gpu_spec
from daemon.capacity.models import ModelArch, model_arch
from daemon.capacity.profile import Cell, CurvePoint, Profile, Provenance, Slo, now_utc
from daemon.domain import BucketGrid

ACT_BYTES = 2.0  # activations and KV cache in fp16/bf16
WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0}
MISC_FRACTION = 0.10  # norms, rotary, activation, adds relative to the linear GEMMs (Vidur, see above)


@dataclass(frozen=True)
class EngineParams:
    """Serving-engine settings that shape capacity; defaults are vLLM's.

    max_num_seqs 256, gpu_memory_utilization 0.9 and a 2048-token chunked-prefill
    budget are vLLM engine-argument defaults for the OpenAI server (docs.vllm.ai,
    "Engine Arguments"; the V1 engine raises the budget to 8192 on >=70 GiB parts,
    which `for_gpu` applies).

    step_overhead_s / per_seq_overhead_s are host-side work per iteration
    (scheduling, sampling, detokenizing, streaming) that does not get faster with
    a faster GPU. vLLM's v0.6.0 release blog (blog.vllm.ai, 2024-09-05) measured
    that on v0.5.3 serving Llama-3-8B on one H100 only 38% of the time was GPU
    execution, the API server 33% and scheduling 29%; `VLLM_V0` encodes that era
    (which is what Mélange measured, early 2024). `VLLM_V1` is the current engine
    with the overhead largely overlapped (assumed 1 ms + 5 us/sequence).
    """

    name: str = "vllm-v1"
    max_num_seqs: int = 256
    max_batched_tokens: int = 2048
    gpu_memory_utilization: float = 0.9
    activation_reserve_gb: float = 1.5  # CUDA graphs, activations, allocator slack per GPU
    step_overhead_s: float = 1.0e-3
    per_seq_overhead_s: float = 5e-6
    allreduce_latency_s: float = 8e-6  # one small NCCL/custom all-reduce on NVLink-class links

    def for_gpu(self, gpu: GpuSpec) -> "EngineParams":
        if self.name == "vllm-v1" and gpu.memory_gb >= 75 and not gpu.name.startswith(("A100", "A800")):
            return replace(self, max_batched_tokens=8192)
        return self


VLLM_V1 = EngineParams()
# v0.2-v0.5 era: ~6 ms per iteration plus ~60 us per sequence of host work. From the v0.6.0 blog:
# Llama-3-8B on H100 at a large batch spends ~15 ms GPU time per step (our roofline) and the GPU
# was busy 38% of the time, i.e. ~25 ms of host work per step at ~256-sequence batches.
VLLM_V0 = EngineParams(name="vllm-v0", step_overhead_s=6e-3, per_seq_overhead_s=75e-6)
ENGINES = {"vllm-v1": VLLM_V1, "vllm-v0": VLLM_V0}


class EstimateError(ValueError):
    """The estimator cannot answer (unknown model/GPU, model does not fit)."""


# ---- operator level (validated against Vidur) ------------------------------------------


def gemm_time(m: float, k: float, n: float, gpu: GpuSpec, dtype: str = "bf16") -> float:
    """Seconds for one (m x k) @ (k x n) GEMM: soft max of the two rooflines plus launch cost."""
    if m <= 0:
        return 0.0
    eff = gpu.efficiency
    wbytes = WEIGHT_BYTES[dtype]
    mem = (k * n * wbytes + (m * k + m * n) * ACT_BYTES) / (gpu.bandwidth_gbs * 1e9 * eff.bw)
    m_padded = m if m <= eff.small_m else math.ceil(m / eff.tile) * eff.tile
    cmp = 2.0 * m_padded * k * n / (gpu.peak_flops(dtype) * eff.compute)
    p = eff.softmax_p
    return (mem**p + cmp**p) ** (1.0 / p) + eff.kernel_s


def layer_linear_time(arch: ModelArch, gpu: GpuSpec, num_tokens: float, tp: int = 1, dtype: str = "bf16") -> float:
    """One layer's attn_pre_proj + attn_post_proj + mlp_up_proj + mlp_down_proj, sharded over tp.

    Same operator split as Vidur's profiles: QKV and (gate+up) are column-parallel,
    the output and down projections row-parallel.
    """
    h = arch.hidden
    up = (2 if arch.gated_mlp else 1) * arch.ffn
    return (
        gemm_time(num_tokens, h, arch.qkv_out / tp, gpu, dtype)
        + gemm_time(num_tokens, h / tp, h, gpu, dtype)
        + gemm_time(num_tokens, h, up / tp, gpu, dtype)
        + gemm_time(num_tokens, arch.ffn / tp, h, gpu, dtype)
    )


# ---- iteration level --------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """One model replica: the model over `tp` GPUs of one type, with an engine."""

    arch: ModelArch
    gpu: GpuSpec
    tp: int = 1
    dtype: str = "bf16"
    engine: EngineParams = field(default_factory=lambda: VLLM_V1)

    def __post_init__(self) -> None:
        if self.dtype not in WEIGHT_BYTES:
            raise EstimateError(f"dtype must be one of {sorted(WEIGHT_BYTES)}, got {self.dtype!r}")
        if self.tp < 1 or self.arch.heads % self.tp or self.arch.kv_heads % min(self.tp, self.arch.kv_heads):
            raise EstimateError(f"tp={self.tp} does not divide {self.arch.name}'s {self.arch.heads} heads")

    @property
    def weight_bytes(self) -> float:
        return self.arch.params * WEIGHT_BYTES[self.dtype]

    @property
    def kv_capacity_tokens(self) -> float:
        """Tokens of KV cache the replica holds after weights and reserves (vLLM's block pool)."""
        usable = self.tp * (self.gpu.memory_gb * 1e9 * self.engine.gpu_memory_utilization - self.engine.activation_reserve_gb * 1e9)
        free = usable - self.weight_bytes
        return max(0.0, free / self.arch.kv_bytes_per_token(ACT_BYTES))

    def fits(self) -> bool:
        return self.kv_capacity_tokens >= 1024  # room for at least one modest request

    def iteration_time(self, n_tok: float, seqs: float, kv_tokens: float, prefill_attn: float = 0.0) -> float:
        """Seconds for one engine step.

        n_tok: tokens through the GEMMs (decodes + prefill chunk); seqs: sequences that
        sample a token; kv_tokens: cached tokens read by decode attention; prefill_attn:
        sum over prefill tokens of the context each attends to.
        """
        a, g, tp = self.arch, self.gpu, self.tp
        eff = g.efficiency
        bw = g.bandwidth_gbs * 1e9 * eff.bw
        flops = g.peak_flops("bf16") * eff.compute  # attention runs in 16-bit
        lin = a.layers * layer_linear_time(a, g, max(n_tok, 1.0), tp, self.dtype) * (1.0 + MISC_FRACTION)
        kv_read = kv_tokens * a.kv_bytes_per_token(ACT_BYTES) / tp / bw
        attn_prefill = 4.0 * prefill_attn * a.head_dim * (a.heads / tp) * a.layers / flops
        head = gemm_time(max(seqs, 1.0), a.hidden, a.vocab / tp, g, self.dtype)
        comm = 0.0
        if tp > 1:
            msg = max(n_tok, 1.0) * a.hidden * ACT_BYTES
            ring = 2.0 * (tp - 1) / tp * msg / (g.link_gbs * 1e9)
            comm = a.layers * 2 * (ring + self.engine.allreduce_latency_s)
        host = self.engine.step_overhead_s + self.engine.per_seq_overhead_s * seqs
        return lin + kv_read + attn_prefill + head + comm + host


@dataclass(frozen=True)
class SteadyState:
    rate: float
    ok: bool
    reason: str  # "" when within SLO, else the binding limit
    t_iter: float = math.inf  # mean iteration time = TPOT
    batch: float = 0.0
    ttft_p99_s: float = math.inf

    @property
    def tpot_ms(self) -> float:
        return self.t_iter * 1e3


def steady_state(rep: Replica, rate: float, inp: float, out: float, inp_hi: float, slo_ttft_s: float,
                 slo_tpot_ms: float) -> SteadyState:
    """Mean-field operating point at `rate` req/s for requests of mean (inp, out) tokens."""
    eng = rep.engine
    out = max(out, 1.0)
    ctx_mean = inp + out / 2.0
    budget = eng.max_batched_tokens

    def rhs(t: float) -> float:
        b = rate * out * t
        p = rate * inp * t
        return rep.iteration_time(b + p, b, b * ctx_mean, p * inp / 2.0)

    # Smallest fixed point of t = rhs(t); rhs is increasing and convex-ish in t, so walk up from t0.
    t = rhs(0.0)
    converged = False
    for _ in range(200):
        nt = rhs(t)
        if abs(nt - t) <= 1e-7 + 1e-6 * t:
            t = nt
            converged = True
            break
        if nt > 60.0:
            break
        t = nt
    if not converged:
        return SteadyState(rate, False, "overloaded")
    b = rate * out * t
    p = rate * inp * t
    if b > eng.max_num_seqs:
        return SteadyState(rate, False, "max_num_seqs", t, b)
    if b * (inp + out) > rep.kv_capacity_tokens:
        return SteadyState(rate, False, "kv_cache", t, b)
    room = budget - b  # prompt tokens one iteration can take beside the decodes
    if room <= 0 or p >= room:
        return SteadyState(rate, False, "token_budget", t, b)
    # Prefill as a server of capacity `room` tokens per iteration (of the length a full one takes).
    t_full = rep.iteration_time(budget, b, b * ctx_mean, room * inp / 2.0)
    chunk = min(room, max(p, inp_hi, 1.0))  # the step carrying this prompt also carries the others' backlog
    t_chunk = rep.iteration_time(b + chunk, b, b * ctx_mean, chunk * inp_hi / 2.0)
    chunks = math.ceil(max(inp_hi, 1.0) / room)
    service_mean = max(inp, 1.0) / room * t_full
    rho = p / room
    wait_p99 = 0.0
    if rho > 0.01:
        wait_p99 = math.log(rho / 0.01) * service_mean / (1.0 - rho)  # M/M/1: P(W > x) = rho e^{-(mu-lam)x}
    ttft = t + chunks * t_chunk + wait_p99  # wait for the running step, prefill chunks, queue
    st = SteadyState(rate, True, "", t, b, ttft)
    if t * 1e3 > slo_tpot_ms:
        return replace(st, ok=False, reason="tpot")
    if ttft > slo_ttft_s:
        return replace(st, ok=False, reason="ttft")
    return st


def bucket_points(lo: int, hi: int) -> tuple[float, float]:
    """(mean, largest) token count of a bucket [lo, hi): requests assumed spread evenly."""
    return (lo + hi) / 2.0, float(hi)


def max_rps(rep: Replica, inp_range: tuple[int, int], out_range: tuple[int, int], slo_ttft_s: float,
            slo_tpot_ms: float) -> tuple[float, str]:
    """(MaxTput, binding limit) for one bucket; 0 when even one request alone misses the SLO."""
    inp, inp_hi = bucket_points(*inp_range)
    out, out_hi = bucket_points(*out_range)
    if out_hi + inp_hi > rep.kv_capacity_tokens:
        return 0.0, "kv_cache"
    lone = steady_state(rep, 1e-9, inp, out, inp_hi, slo_ttft_s, slo_tpot_ms)
    if not lone.ok:
        return 0.0, lone.reason
    # Upper bound: every token of every request costs at least its share of a full-budget iteration.
    per_tok = rep.iteration_time(rep.engine.max_batched_tokens, 1, 0) / rep.engine.max_batched_tokens
    hi = 2.0 / (per_tok * (inp + out))
    while steady_state(rep, hi, inp, out, inp_hi, slo_ttft_s, slo_tpot_ms).ok:
        hi *= 2.0
    lo = 0.0
    reason = steady_state(rep, hi, inp, out, inp_hi, slo_ttft_s, slo_tpot_ms).reason
    for _ in range(40):
        mid = (lo + hi) / 2.0
        st = steady_state(rep, mid, inp, out, inp_hi, slo_ttft_s, slo_tpot_ms)
        if st.ok:
            lo = mid
        else:
            hi, reason = mid, st.reason
        if hi - lo <= 1e-4 * max(hi, 1e-6):
            break
    return lo, reason


def _curve(rep: Replica, cell_max: float, inp_range, out_range, slo_ttft_s, slo_tpot_ms) -> list[CurvePoint]:
    if cell_max <= 0:
        return []
    inp, inp_hi = bucket_points(*inp_range)
    out, _ = bucket_points(*out_range)
    pts = []
    for f in (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5):
        st = steady_state(rep, cell_max * f, inp, out, inp_hi, slo_ttft_s, slo_tpot_ms)
        if not math.isfinite(st.t_iter):
            continue
        pts.append(CurvePoint(rate_rps=round(cell_max * f, 6), ttft_p99_s=round(st.ttft_p99_s, 6),
                              tpot_p99_ms=round(st.tpot_ms, 6), batch=round(st.batch, 3)))
    return pts


def default_grid() -> BucketGrid:
    """Short chat (<256 in, <64 out) to long documents (4k-16k in, 1k-4k out): the config default."""
    from daemon.config import BucketConfig

    return BucketConfig().grid()


def make_replica(model: str, gpu: str, tp: int = 1, dtype: str = "bf16", engine: str | EngineParams = "vllm-v1") -> Replica:
    try:
        arch = model_arch(model)
        spec = gpu_spec(gpu)
    except KeyError as e:
        raise EstimateError(e.args[0]) from None
    eng = engine if isinstance(engine, EngineParams) else ENGINES.get(engine)
    if eng is None:
        raise EstimateError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    return Replica(arch, spec, tp, dtype, eng.for_gpu(spec))


def smallest_tp(model: str, gpu: str, dtype: str = "bf16", engine: str = "vllm-v1", max_tp: int = 8) -> int | None:
    """The fewest GPUs (1, 2, 4, 8) one replica needs to hold the weights and a useful KV cache."""
    base = make_replica(model, gpu, 1, dtype, engine)  # unknown model/GPU/engine: EstimateError
    tp = 1
    while tp <= max_tp:
        try:
            if replace(base, tp=tp).fits():
                return tp
        except EstimateError:  # tp does not divide the heads
            pass
        tp *= 2
    return None


@lru_cache(maxsize=256)
def _estimate_cached(model: str, gpu: str, tp: int, dtype: str, engine: str, ttft_s: float, tpot_ms: float,
                     in_edges: tuple[int, ...], out_edges: tuple[int, ...], curves: bool) -> Profile:
    rep = make_replica(model, gpu, tp, dtype, engine)
    if not rep.fits():
        raise EstimateError(
            f"{rep.arch.name} in {dtype} ({rep.weight_bytes / 1e9:.1f} GB of weights) does not fit on "
            f"{tp} x {rep.gpu.name} ({rep.gpu.memory_gb:g} GB each) with room for a KV cache")
    cells = []
    for i in range(len(in_edges) - 1):
        for j in range(len(out_edges) - 1):
            ir, orr = (in_edges[i], in_edges[i + 1]), (out_edges[j], out_edges[j + 1])
            v, _ = max_rps(rep, ir, orr, ttft_s, tpot_ms)
            curve = _curve(rep, v, ir, orr, ttft_s, tpot_ms) if curves else []
            cells.append(Cell(input_tokens=ir, output_tokens=orr, max_rps=round(v, 4), curve=curve))
    g = rep.gpu
    return Profile(
        model=model, gpu=gpu, tp=tp, dtype=dtype, engine=rep.engine.name,
        slo=Slo(ttft_p99_s=ttft_s, tpot_p99_ms=tpot_ms),
        provenance=Provenance(
            kind="estimated", source=f"daemon.capacity.estimator ({rep.arch.source}; {g.source})",
            created=now_utc(), tool="roofline+continuous-batching",
            notes=f"efficiency: {g.efficiency_source}"),
        cells=cells,
    )


def estimate_profile(model: str, gpu: str, tp: int | None = None, dtype: str = "bf16", *, ttft_s: float = 2.0,
                     tpot_ms: float = 120.0, grid: BucketGrid | None = None, engine: str = "vllm-v1",
                     curves: bool = True) -> Profile:
    """An estimated profile over `grid` (default: the config's default bucket grid)."""
    grid = grid or default_grid()
    if tp is None:
        tp = smallest_tp(model, gpu, dtype, engine)
        if tp is None:
            raise EstimateError(f"{model} in {dtype} does not fit on up to 8 x {gpu}")
    return _estimate_cached(model, gpu, tp, dtype, engine, float(ttft_s), float(tpot_ms),
                            tuple(grid.input_edges), tuple(grid.output_edges), curves)
