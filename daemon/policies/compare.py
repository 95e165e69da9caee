"""Compare policies on identical inputs: `fleetctl simulate --compare`.

Every policy replays the same traces through the same tick against the same
simulated cloud (same seed: the same launch latencies, stockouts, preemption
schedule or spot traces, and prices), from the same warm start, and is judged
request by request by the same judge (daemon/judge). Only what the loop decides
differs (daemon/policies/hook.py). Costs are instance intervals x the price at
launch, clipped to the traces' span, as `fleetctl simulate` reports them.

Policies (daemon/policies/__init__.py): static, reactive, spothedge, melange,
ours_no_forecast, ours, oracle (the bound, daemon/policies/oracle.py).

"Best type": static, reactive and spothedge use one GPU type. Each is run with
every type the service allows, and the cheapest run whose request-level SLO
attainment (the judge's) reaches `slo_target` is kept; when none does, the one
with the highest attainment (and it is flagged). A type whose MaxTput table
cannot serve more than 1 - slo_target of the requests at all (size buckets it
has no SLO-meeting throughput for, e.g. 16k-token prompts on a 24 GB card) cannot
reach the target and is not run (listed as skipped). With several services the
type is chosen per service and, when the choices differ between runs, the
combination is run once more.

Runs go to `jobs` worker processes (fork; the traces are shared, not copied).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from daemon.config import Config
from daemon.domain import CapacityTable, DemandWindow
from daemon.policies.workload import ServiceWorkload, service_workload, utilization_target

POLICIES = ("static", "reactive", "spothedge", "melange", "ours_no_forecast", "ours", "oracle")
SINGLE_TYPE = ("static", "reactive", "spothedge")
BASELINES = ("static", "reactive", "spothedge", "melange", "oracle")  # what every cost is compared with


class CompareError(ValueError):
    """A comparison that cannot be run as asked (unknown policy, nothing to judge...)."""


@dataclass(frozen=True)
class CompareOptions:
    policies: tuple[str, ...] = POLICIES
    slo_target: float = 0.995  # issue 11's attainment target; the bar for "meets the SLO"
    judge: str = "auto"  # auto | full | sampled
    judge_budget: int = 400_000  # auto: judge every request up to this many, else sample hours
    jobs: int = 1
    warmup_s: float | None = None  # default: comparison_warmup(cfg)
    gpus: tuple[str, ...] | None = None  # single-type candidates; None: every type a service allows
    prior: Mapping[str, Sequence[DemandWindow]] | None = None  # history before the replay (simulate's prior)
    keep_timelines: bool = True  # instance intervals for the plots
    ours_db: str | None = None  # a SQLite file to keep the `ours` replay's database in (fleetctl status/audit)


def parse_policies(text: str) -> tuple[str, ...]:
    """`all` or a comma-separated list of policy names, in the canonical order."""
    if text.strip() in ("", "all"):
        return POLICIES
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise CompareError(f"unknown polic{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                           f"choose from {', '.join(POLICIES)} or all")
    return tuple(p for p in POLICIES if p in names)


def comparison_warmup(cfg: Config) -> float:
    """Long enough that every policy's opening fleet is up when the trace starts: the loop's
    lead time plus the slowest launch plus two ticks, in whole ticks."""
    tick = cfg.loop.tick_interval_s
    need = cfg.loop.lead_time_s + cfg.provider.simulated.launch_latency_s[1] + 2 * tick
    return math.ceil(need / tick) * tick


# -- what one run returns ---------------------------------------------------------------------

@dataclass
class RunResult:
    label: str  # "reactive[H100]", "ours", ...
    policy: str
    gpu: dict[str, str] | None
    summary: dict  # simulate's summary
    judged: dict  # the judge's figures (see _judge)
    service_cost: dict[str, float]
    intervals: list[tuple]  # (service, pool, market, price, launched_s, ready_s, end_s) for the plots
    wall_s: float


# Shared with forked workers (set by `compare` before the pool starts; never mutated after).
_CTX: dict = {}


def _requests(traces, origin: datetime):
    from daemon.judge import Requests

    t0 = origin.timestamp()
    return Requests.concat([Requests.build(t0 + np.asarray(tr.t, dtype=np.float64), tr.input_tokens,
                                           tr.output_tokens, name) for name, tr in traces.items()])


def judge_mode(n_requests: int, options: CompareOptions) -> tuple[str, int]:
    """(mode, stride): the full judge up to judge_budget requests, else every stride-th hour."""
    if options.judge == "full" or (options.judge == "auto" and n_requests <= options.judge_budget):
        return "full", 1
    stride = max(2, math.ceil(n_requests / options.judge_budget))
    return "sampled", stride


def _judge(inputs, mode: str, stride: int, services: Sequence[str]) -> dict:
    """Attainment, p99 TTFT / TPOT, failures, overall and per service, from the full or sampled judge."""
    from daemon.judge import STATUS_NAMES, judge
    from daemon.judge.sampled import judge_sampled

    t = time.perf_counter()
    if mode == "full":
        v = judge(inputs)
        counted = np.ones(len(v.status), dtype=bool)
        scale = 1.0
    else:
        sv = judge_sampled(inputs, stride)
        v, counted, scale = sv.verdict, sv.counted, float(stride)
    wall = time.perf_counter() - t
    ok = v.meets_slo[counted]
    st = v.status[counted]
    svc = v.requests.service[counted]

    def p99(x: np.ndarray, k: float = 1.0):
        x = x[counted]
        x = x[np.isfinite(x)]
        return round(float(np.percentile(x, 99)) * k, 4) if x.size else None

    per_service = {}
    for code, name in enumerate(v.requests.services):
        sel = svc == code
        per_service[name] = round(float(ok[sel].mean()), 6) if sel.any() else None
    failed = {name: int(round((st == code).sum() * scale)) for code, name in enumerate(STATUS_NAMES) if code != 0}
    return {
        "slo_attainment": round(float(ok.mean()), 6) if ok.size else None,
        "service_attainment": per_service,
        "p99_ttft_s": p99(v.ttft_s),
        "p99_tpot_ms": p99(v.tpot_s, 1e3),
        "failed_requests": int(sum(failed.values())),
        "failed_by_reason": failed,
        "mode": mode if mode == "full" else f"sampled (every {stride}th hour + 10 min warm-up)",
        "judged_requests": int(counted.sum()),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(v.status) / v.wall_s, 1) if v.wall_s > 0 else None,
    }


def _intervals(store, origin: datetime, end: datetime) -> tuple[list[tuple], dict[str, float]]:
    from daemon.store.schema import Instance

    out, cost = [], {}
    o, e = origin.timestamp(), end.timestamp()
    with store.session() as s:
        for r in s.query(Instance).all():
            if r.launched_at is None:
                continue
            a = r.launched_at.timestamp()
            b = r.ended_at.timestamp() if r.ended_at is not None else e
            ready = r.ready_at.timestamp() if r.ready_at is not None else None
            out.append((r.service, f"{r.gpu}x{r.gpu_count}", r.market, r.price_per_hour, a, ready, b))
            lo, hi = max(a, o), min(b, e)
            if hi > lo:
                cost[r.service] = cost.get(r.service, 0.0) + (hi - lo) / 3600.0 * r.price_per_hour
    return out, cost


def make_policy(name: str, cfg: Config, capacity: CapacityTable, workloads: dict[str, ServiceWorkload],
                gpu: dict[str, str] | None = None):
    """The Policy for a name (None: this project's own decide step)."""
    from daemon.policies.held import MelangePolicy, StaticPolicy
    from daemon.policies.skyserve import ReactivePolicy, SpotHedgePolicy

    if name in ("ours", "ours_no_forecast"):
        return None
    if name == "melange":
        return MelangePolicy(cfg, workloads)
    util = utilization_target(cfg.policy.headroom)
    qps = {s.name: workloads[s.name].qps_target(capacity, _pool(capacity, s.name, gpu[s.name]), util) for s in cfg.services}
    if name == "static":
        return StaticPolicy(cfg, gpu, qps, workloads)
    if name == "reactive":
        return ReactivePolicy(cfg, gpu, qps)
    if name == "spothedge":
        return SpotHedgePolicy(cfg, gpu, qps)
    raise CompareError(f"no policy named {name!r}")


def _pool(capacity: CapacityTable, service: str, gpu: str) -> str:
    """The service's pool of that GPU type in the capacity table (the fewest GPUs per replica)."""
    pools = sorted((p for p in capacity.pools(service) if p.rsplit("x", 1)[0] == gpu),
                   key=lambda p: int(p.rsplit("x", 1)[1]) if p.rsplit("x", 1)[1].isdigit() else 0)
    return pools[0] if pools else f"{gpu}x1"


def run_config(cfg: Config, policy: str) -> Config:
    """The configuration a policy runs with: the same for all, but the forecast for ours_no_forecast."""
    if policy != "ours_no_forecast":
        return cfg
    services = [s.model_copy(update={"forecast": s.forecast.model_copy(update={"model": "recent_peak"})})
                for s in cfg.services]
    return cfg.model_copy(update={"services": services})


def _run(label: str, policy: str, gpu: dict[str, str] | None):
    """One replay and its verdict (in a worker process, or inline); the oracle is a job like the replays."""
    from daemon.judge.store_adapter import inputs_from_store

    if policy == "oracle":
        c = _CTX
        return _oracle(c["cfg"], c["workloads"], c["origin"], c["warmup_s"], c["capacity"], c["n_windows"],
                       c["requests"], c["judge_mode"], c["judge_stride"])
    from daemon.policies.hook import PolicyHook
    from daemon.simulate import simulate

    ctx = _CTX
    t = time.perf_counter()
    cfg = run_config(ctx["cfg"], policy)
    pol = make_policy(policy, cfg, ctx["capacity"], ctx["workloads"], gpu)
    hook = PolicyHook(pol) if pol is not None else None
    res = simulate(cfg, ctx["traces"], "sqlite://", warmup_s=ctx["warmup_s"], policy=hook,
                   capacity=ctx["capacity"], prior=ctx["options"].prior, keep_store=True)
    store = res.store
    try:
        if policy == "ours" and ctx["options"].ours_db:
            target = Path(ctx["options"].ours_db)
            target.parent.mkdir(parents=True, exist_ok=True)
            for f in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
                f.unlink(missing_ok=True)
            with store.engine.connect() as c:
                c.exec_driver_sql("VACUUM INTO ?", (str(target),))
        inputs = inputs_from_store(cfg, store.engine, ctx["requests"])
        judged = _judge(inputs, ctx["judge_mode"], ctx["judge_stride"], list(ctx["traces"]))
        intervals, service_cost = _intervals(store, ctx["origin"], ctx["end"])
    finally:
        store.engine.dispose()
    summary = dict(res.data)
    summary.pop("capacity_sources", None)
    if not ctx["options"].keep_timelines:
        intervals = []
    return RunResult(label, policy, gpu, summary, judged, service_cost, intervals, time.perf_counter() - t)


def _run_star(args) -> RunResult:
    return _run(*args)


# -- the comparison ---------------------------------------------------------------------------

@dataclass
class Comparison:
    result: dict  # the JSON document
    runs: list[RunResult] = field(default_factory=list)
    oracle: object | None = None  # OracleResult
    demand: dict = field(default_factory=dict)  # service -> (window starts s, rate rps) for the plots
    qps_per_replica: dict = field(default_factory=dict)  # (service, pool) -> req/s at the mix (plots)


def _candidates(cfg: Config, capacity: CapacityTable, workloads, options: CompareOptions) -> dict[str, dict]:
    """Per service: the GPU types to try ({type: unservable share}) and those skipped (with why)."""
    out = {}
    allowed_all = options.gpus
    for s in cfg.services:
        tried, skipped = {}, {}
        for g in s.gpus:
            if allowed_all is not None and g not in allowed_all:
                continue
            share = workloads[s.name].unservable(capacity, _pool(capacity, s.name, g))
            if share > 1.0 - options.slo_target:
                skipped[g] = share
            else:
                tried[g] = share
        if not tried:  # nothing can reach the target: try the types that serve the most
            best = min(skipped.values(), default=None)
            tried = {g: v for g, v in skipped.items() if v == best}
            skipped = {g: v for g, v in skipped.items() if g not in tried}
        if not tried:
            raise CompareError(f"service {s.name}: none of its GPU types {s.gpus} is a candidate "
                               f"(restricted to {list(allowed_all or [])})")
        out[s.name] = {"tried": tried, "skipped": skipped}
    return out


def compare(cfg: Config, traces: dict[str, "object"], options: CompareOptions | None = None,
            progress: Callable[[str], None] | None = None) -> Comparison:
    """Run every policy of `options.policies` on `traces` (one RequestTrace per service) and judge them."""
    from daemon.capacity import capacity_table

    options = options or CompareOptions()
    t_start = time.perf_counter()
    say = progress or (lambda msg: None)
    if not options.policies:
        raise CompareError("no policy to compare")
    names = [s.name for s in cfg.services]
    traces = {n: traces[n] for n in names if n in traces}
    missing = [n for n in names if n not in traces]
    if missing:
        raise CompareError(f"no trace for service(s) {missing}")
    capacity = capacity_table(cfg)
    grid = cfg.buckets.grid()
    ws = cfg.loop.window_s
    first = traces[names[0]]
    origin = first.start
    n_windows = max(int(math.ceil((tr.duration_s + 1e-9) / ws)) or 1 for tr in traces.values())
    end = origin + timedelta(seconds=n_windows * ws)
    workloads = {n: service_workload(n, tr, grid, ws, n_windows) for n, tr in traces.items()}
    warmup = options.warmup_s if options.warmup_s is not None else comparison_warmup(cfg)
    requests = _requests(traces, origin)
    mode, stride = judge_mode(len(requests), options)
    _CTX.clear()
    _CTX.update(cfg=cfg, traces=traces, capacity=capacity, workloads=workloads, warmup_s=warmup, options=options,
                requests=requests, judge_mode=mode, judge_stride=stride, origin=origin, end=end, n_windows=n_windows)

    cands = _candidates(cfg, capacity, workloads, options) if set(options.policies) & set(SINGLE_TYPE) else {}
    jobs: list[tuple[str, str, dict | None]] = []
    for pol in options.policies:
        if pol == "oracle":
            jobs.append(("oracle", "oracle", None))
        elif pol in SINGLE_TYPE:
            types = sorted({g for c in cands.values() for g in c["tried"]})
            for g in types:
                gmap = {n: g if g in cands[n]["tried"] else sorted(cands[n]["tried"])[0] for n in names}
                jobs.append((f"{pol}[{g}]", pol, gmap))
        else:
            jobs.append((pol, pol, None))
    # Longest first, so the pool finishes together: the planner's runs are the slow ones.
    jobs.sort(key=lambda j: (j[1] not in ("ours", "ours_no_forecast"), j[1] != "oracle", j[1] != "melange"))
    say(f"{len(jobs) - ('oracle' in options.policies)} replays of {n_windows} windows ({n_windows * ws / 3600:.1f} h)"
        + (" and the oracle" if "oracle" in options.policies else "") + f", judge: {mode}"
        + (f" every {stride}th hour" if mode == "sampled" else "") + f", {options.jobs} process(es)")
    done = _execute(jobs, options.jobs, say)
    oracle = next((r for r in done if not isinstance(r, RunResult)), None)
    runs = [r for r in done if isinstance(r, RunResult)]

    # Single-type baselines: the best type per service; a combination not yet run is run once more.
    chosen: dict[str, RunResult] = {}
    selection: dict[str, dict] = {}
    extra = []
    for pol in SINGLE_TYPE:
        if pol not in options.policies:
            continue
        mine = [r for r in runs if r.policy == pol]
        pick, table = {}, {}
        for n in names:
            rows = []
            for r in mine:
                if r.gpu[n] not in cands[n]["tried"]:
                    continue
                att = r.judged["service_attainment"].get(n)
                rows.append((r.gpu[n], r.service_cost.get(n, 0.0), att if att is not None else 1.0))
            rows = sorted(set(rows))
            ok = [x for x in rows if x[2] >= options.slo_target]
            best = min(ok, key=lambda x: (x[1], x[0])) if ok else max(rows, key=lambda x: (x[2], -x[1]))
            pick[n] = best[0]
            table[n] = {"tried": {g: {"cost_usd": round(c, 4), "slo_attainment": round(a, 6),
                                      "meets_slo": a >= options.slo_target} for g, c, a in rows},
                        "skipped": {g: f"{share:.2%} of requests in size buckets it cannot serve within SLO"
                                    for g, share in cands[n]["skipped"].items()},
                        "chosen": best[0], "meets_slo": bool(ok)}
        selection[pol] = table
        same = [r for r in mine if r.gpu == pick]
        if same:
            chosen[pol] = same[0]
        else:
            extra.append((f"{pol}[{'+'.join(pick[n] for n in names)}]", pol, pick))
    if extra:
        say(f"{len(extra)} more replay(s): the best type per service differs between runs")
        for r in _execute(extra, options.jobs, say):
            chosen[r.policy] = r
            runs.append(r)
    for r in runs:
        if r.policy not in SINGLE_TYPE:
            chosen[r.policy] = r

    doc = _document(cfg, traces, options, chosen, selection, oracle, runs, mode, stride, warmup, n_windows,
                    time.perf_counter() - t_start)
    demand = {n: (origin.timestamp() + np.arange(n_windows) * ws, workloads[n].rates) for n in names}
    qps = {(n, p): workloads[n].qps_target(capacity, p, 1.0) for n in names for p in capacity.pools(n)}
    _CTX.clear()
    return Comparison(doc, runs, oracle, demand, qps)


def _execute(jobs, n_jobs: int, say) -> list[RunResult]:
    if n_jobs <= 1 or len(jobs) <= 1:
        out = []
        for j in jobs:
            r = _run(*j)
            say(_done(r))
            out.append(r)
        return out
    ctx = multiprocessing.get_context("fork")
    out = []
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)), mp_context=ctx) as ex:
        for r in ex.map(_run_star, jobs):
            say(_done(r))
            out.append(r)
    return out


def _done(r) -> str:
    if not isinstance(r, RunResult):
        return (f"  {'oracle':26} ${r.cost_usd:9.2f}  attainment {r.judged['slo_attainment']:.4f}  "
                f"{r.windows} windows, {r.solves} solves in {r.solve_seconds:.1f} s, judge "
                f"{r.judged['requests_per_s']} req/s")
    j = r.judged
    return (f"  {r.label:26} ${r.summary['total_cost_usd']:9.2f}  attainment {j['slo_attainment']:.4f}  "
            f"{r.summary['ticks']} ticks at {r.summary['ticks_per_s']}/s, judge {j['requests_per_s']} req/s, "
            f"{r.wall_s:.1f} s")


def _oracle(cfg, workloads, origin, warmup, capacity, n_windows, requests, mode, stride):
    from daemon.judge import JudgeInputs
    from daemon.judge.store_adapter import services_from_config
    from daemon.policies.oracle import compute_oracle

    t = time.perf_counter()
    res = compute_oracle(cfg, workloads, origin, origin - timedelta(seconds=warmup), capacity, n_windows)
    inputs = JudgeInputs(requests, res.fleet, res.routing, cfg.buckets.grid(), services_from_config(cfg))
    res.judged = _judge(inputs, mode, stride, [s.name for s in cfg.services])
    res.wall_s = time.perf_counter() - t
    return res


def _document(cfg, traces, options, chosen, selection, oracle, runs, mode, stride, warmup, n_windows, wall) -> dict:
    policies: dict[str, dict] = {}
    for name in options.policies:
        if name == "oracle":
            if oracle is None:
                continue
            j = oracle.judged
            policies[name] = {
                "cost_usd": round(oracle.cost_usd, 4), "slo_attainment": j["slo_attainment"],
                "p99_ttft_s": j["p99_ttft_s"], "p99_tpot_ms": j["p99_tpot_ms"],
                "failed_requests": j["failed_requests"],
                "instance_hours": {k: round(v, 3) for k, v in sorted(oracle.instance_hours.items())},
                "launches": oracle.launches, "preemptions": 0,
                "judge": j, "bound": oracle.summary(),
            }
            continue
        r = chosen.get(name)
        if r is None:
            continue
        s, j = r.summary, r.judged
        entry = {
            "cost_usd": round(s["total_cost_usd"], 4), "slo_attainment": j["slo_attainment"],
            "p99_ttft_s": j["p99_ttft_s"], "p99_tpot_ms": j["p99_tpot_ms"],
            "failed_requests": j["failed_requests"], "instance_hours": s["instance_hours"],
            "launches": s["launches"], "preemptions": s["preemptions"],
            "service_attainment": j["service_attainment"], "failed_by_reason": j["failed_by_reason"],
            "capacity_attainment": s["slo_attainment"],
            "replay": {"ticks": s["ticks"], "ticks_per_s": s["ticks_per_s"], "wall_s": s["wall_seconds"],
                       "failed_ticks": s["failed_ticks"], "decisions": s["decisions"]},
            "judge": {k: j[k] for k in ("mode", "judged_requests", "wall_s", "requests_per_s")},
        }
        if name in SINGLE_TYPE:
            entry["gpu"] = dict(r.gpu)
            entry["best_type"] = selection[name]
            entry["meets_slo_target"] = all(t["meets_slo"] for t in selection[name].values())
        policies[name] = entry
    for name, e in policies.items():
        e["cost_ratio"] = {b: (round(e["cost_usd"] / policies[b]["cost_usd"], 4)
                               if policies[b]["cost_usd"] > 0 else None)
                           for b in BASELINES if b in policies and b != name}
        if "meets_slo_target" not in e and e.get("slo_attainment") is not None:
            e["meets_slo_target"] = e["slo_attainment"] >= options.slo_target
    first = traces[cfg.services[0].name]
    sim = cfg.provider.simulated
    return {
        "workload": " + ".join(tr.source for tr in traces.values()),
        "services": {n: {"requests": len(tr), "source": tr.source} for n, tr in traces.items()},
        "requests": int(sum(len(tr) for tr in traces.values())),
        "virtual_start": first.start.isoformat(),
        "virtual_hours": round(n_windows * cfg.loop.window_s / 3600.0, 3),
        "slo_target": options.slo_target,
        "judge": mode if mode == "full" else f"sampled: every {stride}th hour (+10 min warm-up), 1 h windows",
        "simulated_cloud": {"seed": sim.seed, "spot_traces": sim.spot_trace_dir,
                            "spot_preemptions_per_hour": sim.spot_preemptions_per_hour,
                            "launch_latency_s": list(sim.launch_latency_s)},
        "warmup_s": warmup,
        "policies": policies,
        "runs": [{"label": r.label, "cost_usd": round(r.summary["total_cost_usd"], 4),
                  "slo_attainment": r.judged["slo_attainment"], "ticks_per_s": r.summary["ticks_per_s"],
                  "judge_requests_per_s": r.judged["requests_per_s"], "wall_s": round(r.wall_s, 2)} for r in runs],
        "wall_s": round(wall, 2),
        "jobs": options.jobs,
        "notes": _notes(cfg, options),
    }


def _notes(cfg: Config, options: CompareOptions) -> list[str]:
    util = utilization_target(cfg.policy.headroom)
    return [
        "identical inputs: same traces, simulated-cloud seed and spot schedule, prices, launch latencies, "
        "warm start and judge for every policy",
        f"single-type baselines: target_qps_per_replica = MaxTput at the workload's size mix x {util:.3f} "
        f"(1 / (1 + policy.headroom)); static sized for the peak 1-window rate",
        f"best type: the cheapest type whose request-level attainment >= {options.slo_target} "
        "(else the highest attainment, flagged meets_slo false)",
        "oracle: integer per-window optimum with perfect knowledge (a lower bound on cost for any policy that "
        "carries every window's demand per the capacity table; daemon/policies/oracle.py)",
    ]

