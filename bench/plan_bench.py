"""Planner benchmark: solve time and cost against problem size, and against Mélange's slice formulation.

Run from the repository root:

    python bench/plan_bench.py                 # full tables (several minutes: Mélange is slow)
    python bench/plan_bench.py --quick         # smaller sweep
    python bench/plan_bench.py --part melange  # only the comparison with Mélange

Part 1 (identical inputs): Mélange's binary slice model (daemon/plan/melange.py, written
from the paper's math) against our planner on the same Mélange problem, with
- "slices": our integer slice counts per (cell, GPU): Mélange's feasible set without symmetry,
- "shares": continuous (input, output) shares,
- "routable": routing by input bucket only (what a real router can do; not Mélange's problem).
Part 2: the full planner (spot, zone-loss coverage, hazards, change costs vs a current fleet,
quotas, budget) for grids 6x6..12x10, 4..200 offerings, 1..3 services.

Capacity comes from a roofline estimate of Llama-2-7B fp16 under TPOT 120 ms, the method
daemon/defaults.py documents, evaluated at each grid's bucket sizes; the request-size mix
blends the AIBrix 8min_up_and_down length trace (../shared/data/melange, Apache-2.0) with
a long-document component so most cells carry load (see DATA-README there).
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.config import PolicyConfig, QuotaConfig, SolverConfig  # noqa: E402
from daemon.domain import (  # noqa: E402
    BucketGrid, CapacityTable, DemandForecast, FleetInstance, Market, Offering,
)
from daemon.plan.ilp import plan_ilp  # noqa: E402
from daemon.plan.inputs import PlanInputs, ServiceDemand  # noqa: E402
from daemon.plan.melange import MelangeProblem, solve_slices, solve_with_planner  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TRACE = DATA / "melange" / "aibrix-gpu-optimizer" / "traces" / "8min_up_and_down.lengths.csv"

# Chip figures as in daemon/defaults.py (NVIDIA datasheets): memory GB, bandwidth GB/s, dense FP16 TFLOPS.
CHIPS = {
    "L4": (24, 300, 121),
    "A10G": (24, 600, 125),
    "A100-80GB": (80, 2039, 312),
    "H100": (80, 3350, 989),
}
# On-demand $/h per GPU from the SkyPilot catalog v8 rows the simulated provider ships
# (providers/data/offerings.csv in the main checkout): g6.xlarge, g5.xlarge (AWS us-east-1),
# a2-ultragpu-1g, a3-highgpu-1g (GCP us-central1).
PRICES = {"L4": 0.8048, "A10G": 1.006, "A100-80GB": 2.94582, "H100": 5.38327}

P_PARAMS = 7e9  # Llama-2-7B
W_BYTES = 2 * P_PARAMS  # fp16 weights
KV_BYTES = 2 * 32 * 4096 * 2  # K and V, 32 layers, hidden 4096, fp16: 0.5 MiB per token
TPOT_S = 0.120


def roofline_tput(gpu: str, inp: float, out: float) -> float:
    """Req/s one replica sustains for requests of `inp` prompt and `out` output tokens (0 = cannot)."""
    mem, bw, tf = CHIPS[gpu]
    bw, flops = 0.75 * bw * 1e9, 0.5 * tf * 1e12
    ctx = inp + out / 2
    b_mem = (0.9 * mem * 1e9 - W_BYTES) / (KV_BYTES * (inp + out))
    per_seq = ctx * KV_BYTES / bw + 2 * P_PARAMS / flops
    b_slo = (TPOT_S - W_BYTES / bw) / per_seq
    b = math.floor(min(b_mem, b_slo))
    if b < 1:
        return 0.0
    step = W_BYTES / bw + b * per_seq
    prefill = 2 * P_PARAMS * inp / flops
    return round(b / (out * step + b * prefill), 4)


def edges(n: int, top: int, first: int) -> tuple[int, ...]:
    """n buckets: 0 then n geometric edges from `first` to `top` (sizes above `top` join the last)."""
    if n == 1:
        return (0, top)
    ratio = (top / first) ** (1 / (n - 1))
    return (0,) + tuple(int(round(first * ratio**k)) for k in range(n))


def grid_for(n_in: int, n_out: int) -> BucketGrid:
    return BucketGrid(edges(n_in, 16384, 64), edges(n_out, 2048, 16))


def rep(lo: int, hi: int) -> float:
    """A bucket's representative size: geometric middle (half the upper edge for the first)."""
    return hi / 2 if lo == 0 else math.sqrt(lo * hi)


def tputs_for(grid: BucketGrid, gpu: str) -> tuple[tuple[float, ...], ...]:
    ie, oe = grid.input_edges, grid.output_edges
    return tuple(
        tuple(roofline_tput(gpu, rep(ie[i], ie[i + 1]), rep(oe[j], oe[j + 1]))
              for j in range(grid.n_output))
        for i in range(grid.n_input)
    )


def trace_lengths() -> list[tuple[int, int]]:
    if not TRACE.exists():
        return []
    with TRACE.open() as f:
        return [(int(r["prompt_len"]), int(r["output_len"])) for r in csv.DictReader(f)]


def mix_for(grid: BucketGrid, seed: int = 0, long_share: float = 0.4) -> tuple[tuple[float, ...], ...]:
    """Trace histogram (short chat) blended with a seeded lognormal long-document component."""
    counts = [[0.0] * grid.n_output for _ in range(grid.n_input)]
    trace = trace_lengths()
    for inp, out in trace:
        i, j = grid.locate(inp, out)
        counts[i][j] += (1 - long_share) / len(trace)
    rng = random.Random(seed)
    n = 4000
    share = long_share if trace else 1.0
    for _ in range(n):
        inp = int(rng.lognormvariate(math.log(2500), 1.2))
        out = int(rng.lognormvariate(math.log(150), 1.0))
        i, j = grid.locate(inp, out)
        counts[i][j] += share / n
    tot = sum(map(sum, counts))
    return tuple(tuple(c / tot for c in row) for row in counts)


# ---------------------------------------------------------------------------------------------
# Part 1: against Mélange on identical inputs

def melange_problem(n_in: int, n_out: int, sf: int, rate: float, seed: int = 0) -> MelangeProblem:
    grid = grid_for(n_in, n_out)
    gpus = {g: (PRICES[g], tputs_for(grid, g)) for g in CHIPS}
    mix = mix_for(grid, seed)
    # drop cells no GPU can serve (Mélange would be infeasible there) and renormalize
    mix = [[m if any(gpus[g][1][i][j] > 0 for g in gpus) else 0.0 for j, m in enumerate(row)]
           for i, row in enumerate(mix)]
    tot = sum(map(sum, mix))
    return MelangeProblem(gpus, tuple(tuple(m / tot for m in row) for row in mix), rate, sf)


def part_melange(args) -> list[dict]:
    rows = []
    cases = [(6, 6, 8), (6, 6, 16), (8, 8, 8), (8, 8, 16), (10, 10, 16), (12, 10, 16)]
    if args.quick:
        cases = [(6, 6, 8), (8, 8, 16)]
    cfg = SolverConfig(backend=args.solver, time_limit_s=30)
    print("\n## Part 1: against Mélange's slice formulation (identical inputs, 4 GPU types, on-demand)\n")
    print(f"rate {args.rate} req/s; Mélange = binary slices + CBC, time limit {args.melange_time_limit:.0f} s; "
          "costs in $/h; times are wall seconds of the solver call")
    print()
    head = ("grid", "S", "mélange $/h", "mélange s", "slices $/h", "slices s", "shares $/h", "shares s",
            "routable $/h", "routable s", "speedup slices", "speedup shares")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n_in, n_out, sf in cases:
        p = melange_problem(n_in, n_out, sf, args.rate)
        ref = solve_slices(p, time_limit_s=args.melange_time_limit)
        sl, _ = solve_with_planner(p, cfg)
        sh, _ = solve_with_planner(p, cfg, continuous=True)
        ro, _ = solve_with_planner(p, cfg, continuous=True, routing="input")
        tag = "" if ref.status == "optimal" else f" ({ref.status}, time limit)"
        row = dict(grid=f"{n_in}x{n_out}", S=sf, melange=ref.cost, melange_s=ref.solve_seconds, melange_status=ref.status,
                   slices=sl.cost, slices_s=sl.solve_seconds, shares=sh.cost, shares_s=sh.solve_seconds,
                   routable=ro.cost, routable_s=ro.solve_seconds)
        rows.append(row)
        print(f"| {n_in}x{n_out} | {sf} | {ref.cost:.3f}{tag} | {ref.solve_seconds:.2f} | {sl.cost:.3f} | "
              f"{sl.solve_seconds:.3f} | {sh.cost:.3f} | {sh.solve_seconds:.3f} | {ro.cost:.3f} | "
              f"{ro.solve_seconds:.3f} | {ref.solve_seconds / max(sl.solve_seconds, 1e-4):.0f}x | "
              f"{ref.solve_seconds / max(sh.solve_seconds, 1e-4):.0f}x |", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Part 2: the full planner against size

LOCATIONS = [("aws", "us-east-1", z) for z in "abcdf"] + [("aws", "us-west-2", z) for z in "abcd"] + \
    [("gcp", "us-central1", z) for z in "abcf"] + [("gcp", "us-east4", z) for z in "abc"] + \
    [("azure", "eastus", None), ("lambda", "us-east-1", None)]


def offerings(n: int, seed: int = 1) -> list[Offering]:
    """n offerings: the 4 GPU types on-demand first, then (GPU, location) pairs alternating
    spot / on-demand over 18 locations, with a seeded price spread (spot 30-60% of on-demand)."""
    rng = random.Random(seed)
    gpus = list(CHIPS)
    out = [Offering("aws", "us-east-1", "us-east-1a", f"{g}-od", g, 1, Market.ON_DEMAND, PRICES[g]) for g in gpus]
    k = 0
    while len(out) < n:
        gpu = gpus[(k // 2) % len(gpus)]
        cloud, region, zone = LOCATIONS[(k // (2 * len(gpus))) % len(LOCATIONS)]
        market = Market.SPOT if k % 2 == 0 else Market.ON_DEMAND
        base = PRICES[gpu] * rng.uniform(0.95, 1.15)
        price = base if market == Market.ON_DEMAND else base * rng.uniform(0.3, 0.6)
        z = f"{region}{zone}" if zone else None
        out.append(Offering(cloud, region, z, f"{gpu}-{cloud}-{k}", gpu, 1, market, round(price, 4)))
        k += 1
    return out[:n]


def planner_inputs(n_in, n_out, n_offers, n_services, rate, fleet_from=None, seed=0) -> PlanInputs:
    grid = grid_for(n_in, n_out)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    offs = offerings(n_offers)
    table, demands = {}, []
    for s in range(n_services):
        name = f"svc{s}"
        for g in CHIPS:
            table[(name, f"{g}x1")] = tputs_for(grid, g)
        mix = mix_for(grid, seed + s, long_share=0.2 + 0.2 * s)
        fc = DemandForecast(name, now, 360.0, rate * (1 + 0.5 * s), mix, "bench")
        demands.append(ServiceDemand(name, fc, 1, tuple(CHIPS)))
    hazards = {o.location: random.Random(o.location).uniform(0.0, 0.3) for o in offs}
    policy = PolicyConfig(headroom=0.2, spot_loss_coverage=0.8, min_on_demand_share=0.1,
                          max_launches_per_tick=50, max_terminations_per_tick=10, budget_per_hour=10_000.0)
    quotas = (QuotaConfig(cloud="aws", market="spot", max_gpus=64), QuotaConfig(cloud="gcp", max_gpus=96))
    fleet = ()
    if fleet_from is not None:
        fleet = tuple(
            FleetInstance(f"{key}#{k}", f"n{i}-{k}", s, fleet_from.offerings[key], "running")
            for i, ((s, key), n) in enumerate(fleet_from.targets.items()) for k in range(n)
        )
    return PlanInputs(now, grid, tuple(demands), CapacityTable(table), tuple(offs), fleet, policy,
                      preemptions_per_hour=hazards, quotas=quotas)


def part_scale(args) -> list[dict]:
    grids = [(6, 6), (8, 8), (10, 10), (12, 10)]
    sizes = [4, 20, 50, 100, 200]
    services = [1, 2, 3]
    if args.quick:
        grids, sizes, services = [(6, 6), (12, 10)], [4, 200], [1, 3]
    cfg = SolverConfig(backend=args.solver, time_limit_s=args.time_limit)
    print("\n## Part 2: full planner (spot + zone-loss 0.8 + hazards + change costs + quotas + budget)\n")
    print(f"solver time limit {args.time_limit} s per solve; status 'feasible' = stopped at the limit with the")
    print("incumbent, gap = CBC's (incumbent - bound) / incumbent at that point.\n")
    print("Each row: a cold plan for demand at 80% of the rate, then the timed re-plan at 100% with the cold")
    print("plan as the current fleet (change costs, launch/termination limits active). wall = inputs built")
    print("-> Plan returned; solve = solver time incl. lazy zone-loss rounds.\n")
    head = ("grid", "offerings", "services", "routing", "status", "cost $/h", "launch", "term", "wall s",
            "solve s", "gap")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rows = []
    worst = 0.0
    combos = [(g, n, s, "input") for g in grids for n in sizes for s in services]
    combos.append((grids[-1], sizes[-1], services[-1], "cell"))
    for (n_in, n_out), n_off, n_svc, routing in combos:
        c = cfg.model_copy(update={"routing": routing})
        cold = plan_ilp(planner_inputs(n_in, n_out, n_off, n_svc, args.rate * 0.8), c)
        inp = planner_inputs(n_in, n_out, n_off, n_svc, args.rate, fleet_from=cold)
        t0 = time.perf_counter()
        plan = plan_ilp(inp, c)
        wall = time.perf_counter() - t0
        cur = {}
        for f in inp.fleet:
            cur[(f.service, f.offering.key)] = cur.get((f.service, f.offering.key), 0) + 1
        launches = sum(max(0, n - cur.get(k, 0)) for k, n in plan.targets.items())
        terms = sum(max(0, n - plan.targets.get(k, 0)) for k, n in cur.items())
        if (n_in, n_out) == grids[-1] and n_off == sizes[-1] and routing == "input":
            worst = max(worst, wall)
        gap = "-" if plan.gap is None else f"{plan.gap:.4f}"
        rows.append(dict(grid=f"{n_in}x{n_out}", offerings=n_off, services=n_svc, routing=routing,
                         status=plan.status, cost=plan.cost_per_hour, wall=wall, solve=plan.solve_seconds))
        print(f"| {n_in}x{n_out} | {n_off} | {n_svc} | {routing} | {plan.status} | {plan.cost_per_hour:.2f} | "
              f"{launches} | {terms} | {wall:.3f} | {plan.solve_seconds:.3f} | {gap} |", flush=True)
    if args.check_incumbent:
        (n_in, n_out), n_off, n_svc = grids[-1], sizes[-1], services[-1]
        cold = plan_ilp(planner_inputs(n_in, n_out, n_off, n_svc, args.rate * 0.8), cfg)
        inp = planner_inputs(n_in, n_out, n_off, n_svc, args.rate, fleet_from=cold)
        print(f"\nincumbent check at {n_in}x{n_out}, {n_off} offerings, {n_svc} services (objective incl. change costs):")
        for backend, limit in (("cbc", args.time_limit), ("cbc", 60.0), ("highs", 60.0)):
            c = cfg.model_copy(update={"backend": backend, "time_limit_s": limit})
            p = plan_ilp(inp, c)
            gap = "-" if p.gap is None else f"{p.gap:.4f}"
            print(f"  {backend:5s} limit {limit:5.1f} s: {p.status}, objective {p.objective:.3f}, "
                  f"cost {p.cost_per_hour:.2f} $/h, gap {gap}, {p.solve_seconds:.2f} s")
    print(f"\nslowest routable solve at the largest size ({grids[-1][0]}x{grids[-1][1]}, {sizes[-1]} offerings): "
          f"{worst:.3f} s")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=["all", "melange", "scale"], default="all")
    ap.add_argument("--rate", type=float, default=40.0, help="req/s of the (first) service")
    ap.add_argument("--solver", choices=["cbc", "highs"], default="cbc")
    ap.add_argument("--melange-time-limit", type=float, default=120.0)
    ap.add_argument("--check-incumbent", action="store_true",
                    help="part 2: re-solve the largest case for 60 s with CBC and HiGHS to see how good the incumbent is")
    ap.add_argument("--time-limit", type=float, default=1.5, help="planner time limit per solve in part 2")
    args = ap.parse_args(argv)
    print(f"# plan_bench ({'quick' if args.quick else 'full'}; solver {args.solver}; python {sys.version.split()[0]})")
    if not TRACE.exists():
        print(f"note: {TRACE} missing; the size mix uses the lognormal component only")
    if args.part in ("all", "melange"):
        part_melange(args)
    if args.part in ("all", "scale"):
        part_scale(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
