"""PNG plots of a comparison: demand vs capacity per policy, cumulative cost, GPU mix.

Capacity is what the running replicas carry per the capacity table: each running
replica of a pool counts MaxTput at the workload's overall size mix (req/s), so
the line shows where a policy ran below or far above demand. Costs accumulate
from each instance's launch (when billing starts) to its end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.policies.compare import Comparison


def _grid(cmp: Comparison) -> tuple[np.ndarray, float, float]:
    starts = next(iter(cmp.demand.values()))[0]
    step = float(starts[1] - starts[0]) if len(starts) > 1 else 60.0
    return starts, step, float(starts[0])


def _series(cmp: Comparison) -> dict[str, list[tuple]]:
    """policy -> intervals (service, pool, market, price, launched_s, ready_s, end_s)."""
    out: dict[str, list[tuple]] = {}
    chosen = {}
    for r in cmp.runs:
        entry = cmp.result["policies"].get(r.policy)
        if entry is None:
            continue
        if r.gpu is not None and entry.get("gpu") != r.gpu:
            continue
        chosen[r.policy] = r
    for name in cmp.result["policies"]:
        if name == "oracle" and cmp.oracle is not None:
            out[name] = [(iv.service, iv.pool, iv.market, iv.price_per_hour, iv.start_s, iv.start_s, iv.end_s)
                         for iv in cmp.oracle.intervals]
        elif name in chosen:
            out[name] = chosen[name].intervals
    return out


def _step_counts(starts: np.ndarray, step: float, spans: list[tuple[float, float]], weight: list[float]) -> np.ndarray:
    n = len(starts)
    acc = np.zeros(n + 1)
    t0 = starts[0]
    for (a, b), wgt in zip(spans, weight):
        i = int(np.clip(np.ceil((a - t0) / step), 0, n))
        j = int(np.clip(np.ceil((b - t0) / step), 0, n))
        if j > i:
            acc[i] += wgt
            acc[j] -= wgt
    return np.cumsum(acc)[:n]


def write_plots(cmp: Comparison, directory: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    starts, step, t0 = _grid(cmp)
    hours = (starts - t0) / 3600.0
    demand = sum(r for _, r in cmp.demand.values())
    series = _series(cmp)
    names = list(series)
    files = []

    # demand vs capacity
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 1.9 * len(names) + 0.6), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        ivs = [iv for iv in series[name] if iv[5] is not None]
        w = [cmp.qps_per_replica.get((iv[0], iv[1]), 0.0) for iv in ivs]
        cap = _step_counts(starts, step, [(iv[5], iv[6]) for iv in ivs], w)
        ax.plot(hours, demand, color="0.55", lw=0.7, label="demand (req/s)")
        ax.plot(hours, cap, color="tab:blue", lw=1.0, label="capacity of running replicas (MaxTput at the mix)")
        e = cmp.result["policies"][name]
        ax.set_title(f"{name}: ${e['cost_usd']:.2f}, attainment {e['slo_attainment']:.4f}", fontsize=9, loc="left")
        ax.set_ylabel("req/s", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("hours from the trace start")
    fig.tight_layout()
    files.append(d / "demand_capacity.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    # cumulative cost
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in names:
        ivs = series[name]
        rate = _step_counts(starts, step, [(iv[4], iv[6]) for iv in ivs], [iv[3] for iv in ivs])
        ax.plot(hours, np.cumsum(rate * step / 3600.0), lw=1.2, label=name)
    ax.set_xlabel("hours from the trace start")
    ax.set_ylabel("cumulative cost ($)")
    ax.set_title(cmp.result["workload"][:90], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(d / "cumulative_cost.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    # GPU mix: running replicas by pool and market
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 1.9 * len(names) + 0.6), sharex=True, squeeze=False)
    kinds = sorted({f"{iv[1]}/{iv[2]}" for ivs in series.values() for iv in ivs})
    colors = {k: plt.cm.tab10(i % 10) for i, k in enumerate(kinds)}
    for ax, name in zip(axes[:, 0], names):
        stacks, labels = [], []
        for k in kinds:
            ivs = [iv for iv in series[name] if f"{iv[1]}/{iv[2]}" == k and iv[5] is not None]
            if not ivs:
                continue
            stacks.append(_step_counts(starts, step, [(iv[5], iv[6]) for iv in ivs], [1.0] * len(ivs)))
            labels.append(k)
        if stacks:
            ax.stackplot(hours, np.vstack(stacks), labels=labels, colors=[colors[k] for k in labels], step="post")
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel("replicas", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right", ncol=3)
    axes[-1, 0].set_xlabel("hours from the trace start")
    fig.tight_layout()
    files.append(d / "gpu_mix.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files
