r"""The oracle: the integer per-window optimum with perfect knowledge, a lower bound on cost.

What it solves
--------------
For every demand window w (loop.window_s, from the replay's origin) and service s,
knowing exactly the requests of the window (per size cell) and exactly when every
spot location has capacity (the simulated cloud's outage schedule or spot traces,
`SimulatedProvider.spot_outages`), it solves the integer program

    min  sum_p c_p(w) y_p
    s.t. sum_p q_kp = 1                       every input bucket k
         sum_k L_kp(w) q_kp <= y_p            every pool p
         sum_p y_p >= min_replicas_s
         y_p in Z>=0, q_kp in [0, 1]

where L_kp(w) = sum_j d_kj(w) / MaxTput_p[k][j] is the number of replicas of pool p
that carry all of bucket k's requests of the window (Mélange's load, BACKGROUND §1;
the same MaxTput table the planner and the baselines use), q_kp the share of bucket k
routed to p (by prompt length, what the gateway can do), and c_p(w) the cheapest
price of pool p usable in window w: any on-demand offering, or a spot offering in
a location whose capacity lasts from `launch_latency_s[0]` before the window to its
end (a spot machine serving in w was launched at least that long before and its
location kept capacity since, or it would have been refused or preempted). Size
cells no pool can serve are left out (nobody serves them). Cost = sum over windows
of the optimum x the window's length, over the replay's span: the span every
policy's bill is clipped to. Solved with HiGHS (highspy), exactly (gap 0).

Why it is a lower bound
-----------------------
Take any policy on the same inputs whose running replicas carry, in every window,
that window's demand per the capacity table (what every policy here is built to
do; the judge then tells how well). In window w its running fleet, restricted to
pools, is a feasible y for the program above: on-demand is always offered, and a
spot replica running through w sits in a location with capacity over the whole
window and the launch lead before it. Its bill for the window is at least
sum_p c_p(w) y_p x window (every replica costs at least its pool's cheapest usable
price), so at least the optimum; summed over windows, at least the oracle's cost.
Everything else a real policy pays only adds to its bill: start-up time billed
before a replica serves (the lead time), drains, change hysteresis, headroom,
preemptions and relaunches, stockouts and failed launches, which the oracle is
spared. It is not a bound on a policy that runs less capacity than the table says
a window needs (then the judge's attainment is the measure).

What the judge sees
-------------------
The oracle's per-window fleets are also turned into a replica timeline and a
routing table per window and judged like every policy: a replica appears ready at
the start of the first window that needs it (launched ahead, with perfect
knowledge), a replica no longer needed is drained for policy.drain_s, one whose
spot location loses capacity ends at the window's start (its requests are retried
elsewhere). The drains are not billed in the bound.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from daemon.config import Config
from daemon.domain import CapacityTable, Market, Offering
from daemon.judge.inputs import ReplicaSpan, RoutingTable
from daemon.policies.workload import ServiceWorkload


@dataclass(frozen=True)
class Interval:
    """One oracle replica's life, for costs and plots (epoch seconds)."""

    service: str
    pool: str
    market: str
    price_per_hour: float
    start_s: float
    end_s: float | None


@dataclass
class OracleResult:
    cost_usd: float
    instance_hours: dict[str, float]
    fleet: tuple[ReplicaSpan, ...]
    routing: tuple[RoutingTable, ...]
    intervals: list[Interval]
    launches: int
    windows: int
    solves: int
    solve_seconds: float
    unserved_requests: int
    notes: list[str] = field(default_factory=list)
    judged: dict | None = None  # the judge's figures for the schedule (set by the comparison)
    wall_s: float = 0.0

    def summary(self) -> dict:
        return {"cost_usd": round(self.cost_usd, 4),
                "instance_hours": {k: round(v, 3) for k, v in sorted(self.instance_hours.items())},
                "launches": self.launches, "preemptions": 0, "windows": self.windows, "solves": self.solves,
                "solve_seconds": round(self.solve_seconds, 3), "wall_s": round(self.wall_s, 3),
                "unservable_requests": self.unserved_requests,
                "notes": self.notes}


class _WindowMIP:
    """One service's per-window program, built once; each window changes costs, loads and bounds."""

    def __init__(self, n_pools: int, n_buckets: int, min_replicas: int):
        import highspy

        self.P, self.K = n_pools, n_buckets
        h = _quiet_highs()
        h.setOptionValue("threads", 1)
        h.setOptionValue("mip_rel_gap", 0.0)  # exact: the bound must not carry a solver gap
        # A tiny model solved thousands of times: presolve and symmetry detection cost more than
        # they save (measured: about 2x faster without; same optima, tests/test_policies.py).
        h.setOptionValue("presolve", "off")
        h.setOptionValue("mip_detect_symmetry", False)
        inf = highspy.kHighsInf
        P, K = n_pools, n_buckets
        for _ in range(P):
            h.addVar(0.0, inf)
        for _ in range(K * P):
            h.addVar(0.0, 1.0)
        h.changeColsIntegrality(P, np.arange(P, dtype=np.int32),
                                np.array([highspy.HighsVarType.kInteger] * P))
        for k in range(K):  # routing shares sum to 1
            h.addRow(1.0, 1.0, P, np.array([self.q(k, p) for p in range(P)], dtype=np.int32), np.ones(P))
        for p in range(P):  # load on p within its replicas
            idx = np.array([p] + [self.q(k, p) for k in range(K)], dtype=np.int32)
            h.addRow(-inf, 0.0, K + 1, idx, np.r_[-1.0, np.zeros(K)])
        h.addRow(float(min_replicas), inf, P, np.arange(P, dtype=np.int32), np.ones(P))
        self.h = h

    def q(self, k: int, p: int) -> int:
        return self.P + k * self.P + p

    def solve(self, prices: np.ndarray, loads: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """prices[p] ($/h, inf: unusable), loads[k, p] (inf: p cannot serve bucket k) -> (y, q, cost $/h)."""
        import highspy

        h, P, K = self.h, self.P, self.K
        usable = np.isfinite(prices)
        cost = np.where(usable, prices, 0.0)
        h.changeColsCost(P, np.arange(P, dtype=np.int32), cost)
        h.changeColsBounds(P, np.arange(P, dtype=np.int32), np.zeros(P), np.where(usable, highspy.kHighsInf, 0.0))
        qi = np.array([self.q(k, p) for k in range(K) for p in range(P)], dtype=np.int32)
        ok = (np.isfinite(loads) & usable[None, :]).reshape(-1)
        h.changeColsBounds(K * P, qi, np.zeros(K * P), ok.astype(float))
        for k in range(K):
            for p in range(P):
                v = loads[k, p]
                h.changeCoeff(K + p, self.q(k, p), float(v) if np.isfinite(v) else 0.0)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            raise RuntimeError(f"oracle window program not solved: {h.modelStatusToString(h.getModelStatus())}")
        x = np.asarray(h.getSolution().col_value)
        y = np.rint(x[:P]).astype(np.int64)
        qv = np.clip(x[P:].reshape(K, P), 0.0, 1.0)
        return y, qv, float(np.dot(cost, y))


def _quiet_highs():
    """A HiGHS instance without its banner (printed by the first constructor, on file descriptor 1)."""
    import highspy

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    return h


@dataclass(frozen=True)
class _PoolChoice:
    pool: str
    on_demand: Offering | None
    spot: tuple[tuple[Offering, np.ndarray], ...]  # (cheapest spot offering of a location, usable per window)


def _usable_windows(provider, location: str, origin: datetime, n: int, window_s: float, lead_s: float) -> np.ndarray:
    """Windows whose spot capacity in `location` lasts from lead_s before the window to its end."""
    ok = np.ones(n, dtype=bool)
    start = origin - timedelta(seconds=lead_s)
    end = origin + timedelta(seconds=n * window_s)
    for a, b in provider.spot_outages(location, start, end):
        a_s = (a - origin).total_seconds()
        b_s = (b - origin).total_seconds()
        # window w is out when [w*ws - lead, (w+1)*ws) meets (a, b)
        lo = max(0, int(math.floor(a_s / window_s)))
        hi = min(n - 1, int(math.ceil((b_s + lead_s) / window_s)) - 1)
        for w in range(lo, hi + 1):
            if w * window_s - lead_s < b_s and (w + 1) * window_s > a_s:
                ok[w] = False
    return ok


def compute_oracle(cfg: Config, workloads: dict[str, ServiceWorkload], origin: datetime, replay_start: datetime,
                   capacity: CapacityTable, n_windows: int | None = None) -> OracleResult:
    """The bound and its judged schedule. `replay_start` is where the replay's virtual clock began
    (its warm-up before `origin`): the simulated cloud's outage schedule counts from there."""
    from providers.simulated import SimulatedProvider

    t0 = time.perf_counter()
    provider = SimulatedProvider(cfg.provider.simulated, lambda: replay_start)
    provider.list()  # the cloud's clock starts where the replay's did
    offerings = provider.offerings()
    grid = cfg.buckets.grid()
    ws = cfg.loop.window_s
    lead = float(cfg.provider.simulated.launch_latency_s[0])
    n = n_windows if n_windows is not None else max(w.counts.shape[0] for w in workloads.values())
    origin_s = origin.timestamp()
    drain = cfg.policy.drain_s
    notes = ["start-up time, drains, stockouts and failed launches are not billed (a bound)"]
    if cfg.quotas:
        notes.append("quotas are ignored (a relaxation: still a bound)")
    spans: list[ReplicaSpan] = []
    intervals: list[Interval] = []
    weights_by_window: list[dict] = [dict() for _ in range(n)]
    hours: dict[str, float] = defaultdict(float)
    cost = 0.0
    launches = solves = unserved = 0
    usable_cache: dict[str, np.ndarray] = {}
    for svc in cfg.services:
        wl = workloads.get(svc.name)
        counts = np.zeros((n, grid.n_input, grid.n_output)) if wl is None else wl.counts[:n]
        if counts.shape[0] < n:
            counts = np.concatenate([counts, np.zeros((n - counts.shape[0], grid.n_input, grid.n_output))])
        pools: dict[str, list[Offering]] = defaultdict(list)
        for o in offerings:
            if o.gpu in svc.gpus and capacity.get(svc.name, o.pool) is not None:
                if o.market is Market.SPOT and not cfg.policy.spot:
                    continue
                pools[o.pool].append(o)
        names = sorted(pools)
        if not names:
            raise ValueError(f"oracle: service {svc.name} has no offering with a capacity entry")
        choices = []
        for pool in names:
            od = min((o for o in pools[pool] if o.market is Market.ON_DEMAND), key=lambda o: (o.price_per_hour, o.key),
                     default=None)
            by_loc: dict[str, Offering] = {}
            for o in sorted((o for o in pools[pool] if o.market is Market.SPOT), key=lambda o: (o.price_per_hour, o.key)):
                by_loc.setdefault(o.location, o)
            spot = []
            for loc, o in by_loc.items():
                if od is not None and o.price_per_hour >= od.price_per_hour:
                    continue  # never cheaper than on-demand of the same pool
                if loc not in usable_cache:
                    usable_cache[loc] = _usable_windows(provider, loc, origin, n, ws, lead)
                spot.append((o, usable_cache[loc]))
            choices.append(_PoolChoice(pool, od, tuple(sorted(spot, key=lambda x: (x[0].price_per_hour, x[0].key)))))
        tputs = np.array([capacity.get(svc.name, p) for p in names], dtype=float)  # (P, K, J)
        P, K = len(names), grid.n_input
        servable_cell = (tputs > 0).any(axis=0)  # (K, J)
        with np.errstate(divide="ignore"):
            inv = np.where(tputs > 0, 1.0 / np.where(tputs > 0, tputs, 1.0), np.inf)  # (P, K, J)
        mip = _WindowMIP(P, K, svc.min_replicas)
        cache: dict[bytes, tuple] = {}
        live: dict[str, list[list]] = defaultdict(list)  # offering key -> [[name, ready_s], ...]
        serial = 0
        prev_choice: dict[str, Offering] = {}
        for w in range(n):
            c = counts[w]
            unserved += int(c[~servable_cell].sum())
            c = np.where(servable_cell, c, 0.0)
            d = c / ws  # req/s per cell
            prices = np.full(P, np.inf)
            pick: list[Offering | None] = [None] * P
            for p, ch in enumerate(choices):
                best = ch.on_demand
                for o, ok in ch.spot:
                    if ok[w] and (best is None or o.price_per_hour < best.price_per_hour):
                        best = o
                        break  # sorted by price: the first usable is the cheapest
                if best is not None:
                    prices[p] = best.price_per_hour
                    pick[p] = best
            # loads[k, p]: replicas of p for all of bucket k (inf if p cannot serve a demanded cell of k)
            loads = np.einsum("kj,pkj->kp", d, np.where(np.isinf(inv), 0.0, inv))
            blocked = ((d[None, :, :] > 0) & np.isinf(inv)).any(axis=2).T  # (K, P)
            loads[blocked] = np.inf
            # A bucket whose demanded cells no single usable pool serves all of (routing is by prompt
            # length only) cannot be carried: nobody serves it; left out like an unservable cell.
            stuck = (d.sum(axis=1) > 0) & np.all(blocked | ~np.isfinite(prices)[None, :], axis=1)
            if stuck.any():
                unserved += int(c[stuck].sum())
                loads[stuck] = 0.0
            key = loads.tobytes() + prices.tobytes()
            if key in cache:
                y, q, c_h = cache[key]
            else:
                y, q, c_h = mip.solve(prices, loads)
                cache[key] = (y, q, c_h)
                solves += 1
            cost += c_h * ws / 3600.0
            t_w = origin_s + w * ws
            want: dict[str, int] = {}
            for p in range(P):
                if y[p] > 0:
                    off = pick[p]
                    want[off.key] = int(y[p])
                    hours[f"{off.pool}/{off.market}"] += float(y[p]) * ws / 3600.0
                    prev_choice[off.key] = off
            # the replica timeline: keep what stays, add what is new, end the rest (newest first)
            for key_o in sorted(set(live) | set(want)):
                have = live[key_o]
                target = want.get(key_o, 0)
                off = prev_choice[key_o]
                while len(have) < target:
                    serial += 1
                    have.append([f"oracle-{svc.name}-{serial:06d}", t_w])
                    launches += 1
                while len(have) > target:
                    name, ready = have.pop()
                    lost = off.market is Market.SPOT and not _spot_usable(choices, off, w)
                    end = t_w if lost or drain <= 0 else t_w + drain
                    spans.append(_span(name, svc.name, off, ready, end, None if lost else t_w))
                    intervals.append(Interval(svc.name, off.pool, str(off.market), off.price_per_hour, ready, t_w))
            wt = {}
            for k in range(K):
                share = tuple((names[p], round(float(q[k, p]), 4)) for p in range(P) if y[p] > 0 and q[k, p] > 1e-6)
                if not share:  # no request of this bucket now: send any to the replicas there are
                    share = tuple((names[p], float(y[p])) for p in range(P) if y[p] > 0)
                wt[(svc.name, k)] = share
            weights_by_window[w].update(wt)
        end_s = origin_s + n * ws
        for key_o, have in live.items():
            off = prev_choice[key_o]
            for name, ready in have:
                spans.append(_span(name, svc.name, off, ready, None, None))
                intervals.append(Interval(svc.name, off.pool, str(off.market), off.price_per_hour, ready, end_s))
    routing: list[RoutingTable] = []
    for w in range(n):
        table = RoutingTable(origin_s + w * ws, weights_by_window[w])
        if routing and routing[-1].weights == table.weights:
            continue
        routing.append(table)
    spans.sort(key=lambda s: (s.ready_at or 0.0, s.name))
    return OracleResult(cost, dict(hours), tuple(spans), tuple(routing), intervals, launches, n, solves,
                        time.perf_counter() - t0, unserved, notes)


def _spot_usable(choices: list[_PoolChoice], off: Offering, w: int) -> bool:
    for ch in choices:
        for o, ok in ch.spot:
            if o.key == off.key:
                return bool(ok[w])
    return True


def _span(name: str, service: str, off: Offering, ready: float, end: float | None, drain_at: float | None) -> ReplicaSpan:
    return ReplicaSpan(name=name, service=service, pool=off.pool, gpu=off.gpu, gpu_count=off.gpu_count,
                       market=str(off.market), cloud=off.cloud, ready_at=ready, end_at=end, drain_at=drain_at)
