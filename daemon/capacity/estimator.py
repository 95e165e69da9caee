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
so t solves t = iteration(B + p, B, B*(I + O/2)): the mean step. The objectives are
p99s over requests, and those come from the steps' variance, which the mean hides:
prompts arrive one by one, so a step carries no prefill, or one or several prompts'
worth up to the budget, and a request with a short answer sees only a few steps
(right after its own, long, prefill step). `_step_queue` follows the prefill queue
step by step (a Markov chain with Poisson arrivals per step); its law gives the p99
TPOT over the bucket's output lengths and the p99 TTFT of the bucket's largest
prompt. The KV cache must hold the p99 of what the running requests hold. The
largest lam meeting TPOT, TTFT, the KV cache, max_num_seqs and the token budget is
MaxTput. Limits: Poisson arrivals (bursts beyond that are the headroom's and the
forecast's job), prompts of the bucket's mean size in the queue, no prefix caching,
no speculative decoding, dense models only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from scipy.special import ndtr

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


# ---- the chunked-prefill queue, step by step ----------------------------------------------
#
# Mean-field, every step carries the same share of prefill. It does not: prompts arrive one
# by one (Poisson), so a step carries none, one or several prompts' chunks, and a long step
# lets more prompts arrive for the next (the queue feeds itself near saturation). A request
# with few output tokens sees only a few steps, so its TPOT is close to one step's time, and
# the p99 over requests is set by the long steps, not the mean; a prompt's TTFT is the queue
# it finds, which is not M/M/1 when service comes in steps. `_step_queue` is that queue as a
# discrete-time Markov chain at step starts: the state is the prefill work waiting (in chunks),
# a step takes up to the token budget of it, and the prompts arriving during the step (Poisson
# at the offered rate over that step's length) join the queue. Its stationary law gives the
# step-time distribution (TPOT) and the work a prompt finds ahead of it (TTFT). Same
# `iteration_time` as everywhere; only the arrival process is modelled differently.

TAIL = 0.01  # the SLOs are p99s over requests
Z99 = 2.326  # standard normal 99th percentile
_MAX_UNITS_PER_STEP = 8
_MAX_STATES = 160
_EXACT_STEPS = 12


@dataclass(frozen=True)
class StepQueue:
    unit_tokens: float  # prompt tokens one state of the chain stands for
    per_step: int  # states (units) one step takes: the token budget beside the decodes
    pi: np.ndarray  # stationary P(queue = q units) at a step start, q = 0..len-1
    step_s: np.ndarray  # step time when the queue at its start is q units
    clipped: float  # stationary mass at the last state (the queue ran past what the chain holds)
    P: np.ndarray  # transition matrix between step starts
    P_done: np.ndarray  # the same from a step that finished a prompt, that prompt's work excluded
    taken: np.ndarray  # units of prefill the step starting in state q takes

    def tpot_survival(self, xs: np.ndarray, n_steps: np.ndarray) -> np.ndarray:
        """P(TPOT > x) at each x, for a request drawn evenly from `n_steps` (decode steps).

        A request's TPOT is the mean of its n steps. Its steps start right after the step that
        prefilled it, which (taking prompts) was long and let prompts pile up for the next:
        the first steps of a request are longer than the stationary law says, and for short
        answers they are all there is. So step k's law is the chain's law k steps after a
        prefill step (chosen in proportion to the prompts it carried); the steps are combined
        as independent draws of those laws: exactly (binned convolution) up to `_EXACT_STEPS`,
        by the normal approximation beyond, with the stationary law for the later steps."""
        laws, means, variances = self._mean_laws()
        st_mean = float(self.pi @ self.step_s)
        st_var = max(float(self.pi @ (self.step_s - st_mean) ** 2), 0.0)
        total = np.zeros(len(xs))
        for n in n_steps:
            n = int(n)
            if n <= _EXACT_STEPS:
                grid, pmf = laws[n - 1]
                tail = np.concatenate([np.cumsum(pmf[::-1])[::-1], [0.0]])  # P(value >= grid[i])
                total += tail[np.searchsorted(grid, xs, side="right")]
                continue
            mean = (means.sum() + (n - _EXACT_STEPS) * st_mean) / n
            sd = math.sqrt(variances.sum() + (n - _EXACT_STEPS) * st_var) / n
            total += (xs < mean).astype(float) if sd <= 0.0 else ndtr((mean - xs) / sd)
        return total / max(len(n_steps), 1)

    def tpot_p99(self, n_steps: np.ndarray) -> float:
        xs = np.linspace(float(self.step_s.min()), float(self.step_s.max()), 257)
        surv = self.tpot_survival(xs, n_steps)
        k = int(np.argmax(surv <= TAIL))  # survival falls with x; the last point is 0
        return float(xs[k])

    def _mean_laws(self):
        """([(values, pmf) of the mean of a request's first n steps, n = 1.._EXACT_STEPS] on a
        128-bin grid, the per-step means, the per-step variances)."""
        cached = self.__dict__.get("_laws")
        if cached is not None:
            return cached
        t = self.step_s
        lo, hi = float(t.min()), float(t.max())
        bins = 128
        width = max(hi - lo, 1e-12) / (bins - 1)
        idx = np.rint((t - lo) / width).astype(int)
        state = self.pi * self.taken
        state = state / state.sum() if state.sum() > 0 else self.pi
        laws, means, variances, cur = [], [], [], None
        for n in range(1, _EXACT_STEPS + 1):
            state = state @ (self.P_done if n == 1 else self.P)
            one = np.zeros(bins)
            np.add.at(one, idx, state)
            m = float(state @ t)
            means.append(m)
            variances.append(max(float(state @ (t - m) ** 2), 0.0))
            cur = one if cur is None else np.convolve(cur, one)
            laws.append((lo + np.arange(len(cur)) * width / n, cur))
        res = (laws, np.array(means), np.array(variances))
        object.__setattr__(self, "_laws", res)
        return res


def _step_queue(rep: Replica, rate: float, inp: float, b: float, ctx_mean: float, room: float) -> StepQueue:
    # Prefill work is counted in units of room/K tokens, so a step takes exactly the budget left
    # beside the decodes (K units) as vLLM fills it, and a prompt adds inp/unit units (split
    # between the two nearest states when not whole). K shrinks for long prompts so that a few
    # of them still fit in the chain.
    K = max(1, min(_MAX_UNITS_PER_STEP, round(16.0 * room / inp)))
    unit_tok = room / K
    mu = K
    per_prompt = inp / unit_tok  # units one prompt adds
    T = np.array([rep.iteration_time(b + j * unit_tok, b, b * ctx_mean, j * unit_tok * inp / 2.0)
                  for j in range(mu + 1)])
    n = int(min(_MAX_STATES, max(48, 16 * mu, 8 * math.ceil(per_prompt))))
    q = np.arange(n)
    j = np.minimum(q, mu)
    lam = rate * T[j]  # mean prompts arriving during the step that starts with q units waiting
    a_max = int(np.ceil(lam.max() + 8.0 * math.sqrt(lam.max()) + 8))
    a = np.arange(a_max + 1)
    # Poisson pmf for each state's step, in logs (a! via lgamma)
    lg = np.array([math.lgamma(k + 1.0) for k in a])
    with np.errstate(divide="ignore"):
        logp = a[None, :] * np.log(np.maximum(lam[:, None], 1e-300)) - lam[:, None] - lg[None, :]
    pmf = np.exp(logp)
    pmf /= pmf.sum(axis=1, keepdims=True)

    def transitions(left: np.ndarray) -> np.ndarray:
        dest = left[:, None] + a[None, :] * per_prompt  # units waiting at the next start
        lo = np.floor(dest).astype(int)
        frac = dest - lo
        M = np.zeros((n, n))
        rows = np.broadcast_to(q[:, None], dest.shape)
        np.add.at(M, (rows, np.minimum(lo, n - 1)), pmf * (1.0 - frac))
        np.add.at(M, (rows, np.minimum(lo + 1, n - 1)), pmf * frac)
        return M

    P = transitions((q - j).astype(float))
    # After the step that finished a given prompt, what waits is the others' work only. Steps are
    # weighed by the work they take (each prompt's work is taken once), so for a prompt longer
    # than one step its earlier steps count too; what they leave of it (at most the part beyond
    # one step) is not counted as waiting. For the steps a request decodes in (StepQueue.tpot_*).
    P_done = transitions(np.maximum(q - j - max(per_prompt - mu, 0.0), 0.0))
    # stationary law: pi (P - I) = 0, sum pi = 1
    A = P.T - np.eye(n)
    A[-1, :] = 1.0
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    try:
        pi = np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        pi = np.full(n, 1.0 / n)
    pi[pi < 1e-14] = 0.0  # round-off of the solve (it would weigh in _mean_laws at tiny rates)
    pi /= pi.sum()
    return StepQueue(unit_tokens=unit_tok, per_step=mu, pi=pi, step_s=T[j], clipped=float(pi[-1]), P=P,
                     P_done=P_done, taken=j.astype(float))


def _ttft_p99(rep: Replica, sq: StepQueue, rate: float, inp: float, b: float, ctx_mean: float, inp_hi: float) -> float:
    """p99 TTFT of a prompt of `inp_hi` tokens: the step under way when it arrives, then the
    work waiting at the next step start (half of its step's other arrivals ahead of it) and
    its own tokens, taken a budget's worth per step."""
    t, pi = sq.step_s, sq.pi
    n = len(pi)
    q = np.arange(n)
    j = np.minimum(q, sq.per_step)
    w = pi * t  # arrivals fall in a step in proportion to its length
    w = w / w.sum()
    # left over after the step under way, and (on average) half of that step's other arrivals
    ahead_tok = (q - j) * sq.unit_tokens + rate * t / 2.0 * inp
    per_step_tok = sq.per_step * sq.unit_tokens
    t_full = t[-1]  # the chain's last state is past one step's work: a step that takes the whole budget
    total = ahead_tok + inp_hi
    steps = np.ceil(total / per_step_tok)
    last = total - (steps - 1) * per_step_tok
    uniq, back = np.unique(np.round(last, 3), return_inverse=True)
    t_last = np.array([rep.iteration_time(b + x, b, b * ctx_mean, x * inp_hi / 2.0) for x in uniq])[back]
    ttft = t + (steps - 1) * t_full + t_last
    order = np.argsort(ttft)
    cdf = np.cumsum(w[order])
    k = int(np.searchsorted(cdf, 1.0 - TAIL))
    return float(ttft[order[min(k, n - 1)]])


@dataclass(frozen=True)
class SteadyState:
    rate: float
    ok: bool
    reason: str  # "" when within SLO, else the binding limit
    t_iter: float = math.inf  # mean iteration time (the mean TPOT)
    batch: float = 0.0
    ttft_p99_s: float = math.inf
    tpot_p99_s: float = math.nan  # p99 over requests of their own TPOT (the step queue's law)

    @property
    def tpot_ms(self) -> float:
        return (self.t_iter if math.isnan(self.tpot_p99_s) else self.tpot_p99_s) * 1e3


def _decode_steps(out: float, out_lo: float | None, out_hi: float | None) -> np.ndarray:
    """Decode steps (output tokens - 1) of requests spread evenly over the bucket; one-token
    answers have no TPOT."""
    lo = max(2.0, out if out_lo is None else out_lo)
    hi = max(lo, out if out_hi is None else out_hi - 1.0)
    return np.unique(np.round(np.linspace(lo, hi, 24))) - 1.0


def _spread(inp_range, out_range) -> dict:
    """steady_state's bucket spread arguments for a cell of the grid."""
    return dict(inp_lo=float(inp_range[0]), out_lo=float(out_range[0]), out_hi=float(out_range[1]))


def steady_state(rep: Replica, rate: float, inp: float, out: float, inp_hi: float, slo_ttft_s: float,
                 slo_tpot_ms: float, *, inp_lo: float | None = None, out_lo: float | None = None,
                 out_hi: float | None = None) -> SteadyState:
    """Operating point at `rate` req/s for requests of mean (inp, out) tokens.

    The batch and mean step time are mean-field (Little's law, see the module docstring);
    the p99 TPOT and TTFT come from the step queue (`_step_queue`), and the KV cache is
    checked at the p99 of what the running requests hold. `inp_lo`, `out_lo`/`out_hi`
    give the bucket's spread (requests taken evenly over it); without them, a point."""
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
    # KV cache: the running requests are ~Poisson(b) in number (M/G/inf), each holding its
    # prompt and what it has generated so far; vLLM preempts (and recomputes) past the pool,
    # so the pool must hold the p99 of the total, not its mean.
    i_lo = inp if inp_lo is None else inp_lo
    o_lo = out if out_lo is None else max(out_lo, 1.0)
    o_hi = out if out_hi is None else max(out_hi, o_lo)
    var_in = (inp_hi - i_lo) ** 2 / 12.0
    e_out2 = (o_hi - o_lo) ** 2 / 12.0 + out**2
    e_x = ctx_mean
    e_x2 = var_in + inp**2 + inp * out + e_out2 / 3.0
    kv_p99 = b * e_x + Z99 * math.sqrt(max(b * e_x2, 0.0))
    if kv_p99 > rep.kv_capacity_tokens:
        return SteadyState(rate, False, "kv_cache", t, b)
    room = budget - b  # prompt tokens one iteration can take beside the decodes
    if room <= 0 or p >= room:
        return SteadyState(rate, False, "token_budget", t, b)
    sq = _step_queue(rep, rate, max(inp, 1.0), b, ctx_mean, room)
    if sq.clipped > 1e-3:  # the prefill queue runs past what the chain holds: unstable or nearly
        return SteadyState(rate, False, "ttft", t, b)
    tpot99 = sq.tpot_p99(_decode_steps(out, out_lo, out_hi))
    ttft = _ttft_p99(rep, sq, rate, max(inp, 1.0), b, ctx_mean, max(inp_hi, 1.0))
    st = SteadyState(rate, True, "", t, b, ttft, tpot99)
    if tpot99 * 1e3 > slo_tpot_ms:
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
    spread = _spread(inp_range, out_range)

    def at(r: float) -> SteadyState:
        return steady_state(rep, r, inp, out, inp_hi, slo_ttft_s, slo_tpot_ms, **spread)

    lone = at(1e-9)
    if not lone.ok:
        return 0.0, lone.reason
    # Upper bound: every token of every request costs at least its share of a full-budget iteration.
    per_tok = rep.iteration_time(rep.engine.max_batched_tokens, 1, 0) / rep.engine.max_batched_tokens
    hi = 2.0 / (per_tok * (inp + out))
    while at(hi).ok:
        hi *= 2.0
    lo = 0.0
    reason = at(hi).reason
    for _ in range(40):
        mid = (lo + hi) / 2.0
        st = at(mid)
        if st.ok:
            lo = mid
        else:
            hi, reason = mid, st.reason
        if hi - lo <= 1e-3 * max(hi, 1e-6):
            break
    return lo, reason


def _curve(rep: Replica, cell_max: float, inp_range, out_range, slo_ttft_s, slo_tpot_ms) -> list[CurvePoint]:
    if cell_max <= 0:
        return []
    inp, inp_hi = bucket_points(*inp_range)
    out, _ = bucket_points(*out_range)
    spread = _spread(inp_range, out_range)
    pts = []
    for f in (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5):
        st = steady_state(rep, cell_max * f, inp, out, inp_hi, slo_ttft_s, slo_tpot_ms, **spread)
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
