"""What the judge says: per request, and summed up per service and per pool.

A request meets the SLO when it was served and both its TTFT and its TPOT are
within the service's objectives (ServiceConfig.slo: ttft_p99_s, tpot_p99_ms).
Attainment is over every request that arrived, failed ones included: a request
refused for its length or lost to a preemption is a miss, not an omission.

TTFT: first token time - first arrival (a retried request keeps its arrival).
TPOT: (last token - first token) / (output tokens - 1), the mean gap the client
saw, stalls of a retry or a recompute included; undefined (NaN) for one-token
answers, which then meet the TPOT objective trivially.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.judge.inputs import ReplicaSpan, Requests

SERVED, CONTEXT, NO_REPLICA, PREEMPTED, TERMINATED = 0, 1, 2, 3, 4
STATUS_NAMES = ("served", "context", "no_replica", "preempted", "terminated")
FAILURE_HELP = {
    "context": "prompt + output longer than the model's context (max_model_len): refused",
    "no_replica": "no healthy replica of the service when it arrived",
    "preempted": "lost with a preempted replica and no other replica could take it within the retries",
    "terminated": "still in flight when a replica ended after a drain, and no other replica took it",
}
PERCENTILES = (50, 90, 99)


def _pct(x: np.ndarray, scale: float = 1.0) -> dict:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {f"p{p}": None for p in PERCENTILES}
    vals = np.percentile(x, PERCENTILES)
    return {f"p{p}": round(float(v) * scale, 6) for p, v in zip(PERCENTILES, vals)}


@dataclass(frozen=True)
class Verdict:
    """Per-request outcomes, in the order of `requests`."""

    requests: Requests
    fleet: tuple[ReplicaSpan, ...]
    ttft_s: np.ndarray  # NaN when failed
    tpot_s: np.ndarray  # NaN when failed or a one-token answer
    e2e_s: np.ndarray  # NaN when failed
    status: np.ndarray  # int8, index into STATUS_NAMES
    replica: np.ndarray  # int32 index into fleet of the replica that served it (or lost it last); -1 none
    retries: np.ndarray  # int16: times re-sent after a replica was lost
    recomputes: np.ndarray  # int16: KV-cache preemptions (recompute) suffered
    fallback: np.ndarray  # bool: routed outside the plan's pools (no healthy replica there)
    meets_slo: np.ndarray  # bool
    ttft_slo_s: np.ndarray  # float: the objective each request was judged by (its service's)
    tpot_slo_ms: np.ndarray
    wall_s: float = 0.0
    iterations: int = 0  # engine iterations simulated (closed-form runs counted in full)
    kv_preemptions: int = 0

    @property
    def served(self) -> np.ndarray:
        return self.status == SERVED

    def attainment(self) -> float:
        n = len(self.status)
        return float(self.meets_slo.sum()) / n if n else 1.0

    def pools(self) -> np.ndarray:
        """Pool name per request (of the replica that served or lost it; "-" when none)."""
        names = np.array([r.pool for r in self.fleet] + ["-"], dtype=object)
        return names[np.where(self.replica >= 0, self.replica, len(self.fleet))]

    def window_attainment(self, window_s: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
        """(window start epoch seconds, attainment) for each window that had requests, by arrival."""
        t = self.requests.arrival_s
        if t.size == 0:
            return np.zeros(0), np.zeros(0)
        k = np.floor((t - t.min()) / window_s).astype(np.int64)
        n = np.bincount(k)
        ok = np.bincount(k, weights=self.meets_slo.astype(np.float64), minlength=n.size)
        has = n > 0
        return t.min() + np.nonzero(has)[0] * window_s, ok[has] / n[has]

    def _block(self, sel: np.ndarray) -> dict:
        n = int(sel.sum())
        st = self.status[sel]
        served = st == SERVED
        failed = {name: int((st == code).sum()) for code, name in enumerate(STATUS_NAMES) if code != SERVED}
        return {
            "requests": n,
            "served": int(served.sum()),
            "slo_attainment": round(float(self.meets_slo[sel].sum()) / n, 6) if n else None,
            "failed": failed,
            "ttft_s": _pct(self.ttft_s[sel]),
            "tpot_ms": _pct(self.tpot_s[sel], 1e3),
            "e2e_s": _pct(self.e2e_s[sel]),
            "fallback_routed": int(self.fallback[sel].sum()),
            "retried": int((self.retries[sel] > 0).sum()),
            "kv_recomputed": int((self.recomputes[sel] > 0).sum()),
        }

    def summary(self, window_s: float = 60.0) -> dict:
        """Attainment and p50/p90/p99 of TTFT, TPOT and end-to-end, overall, per service and per pool."""
        everything = np.ones(len(self.status), dtype=bool)
        out = self._block(everything)
        _, wa = self.window_attainment(window_s)
        out["worst_window_attainment"] = round(float(wa.min()), 6) if wa.size else None
        out["window_s"] = window_s
        svc = self.requests.service
        out["services"] = {name: self._block(svc == k) for k, name in enumerate(self.requests.services)
                           if np.any(svc == k)}
        pools = self.pools()
        keys = np.array([f"{self.requests.services[s]}/{p}" for s, p in zip(svc.tolist(), pools.tolist())],
                        dtype=object) if len(svc) else np.zeros(0, dtype=object)
        out["pools"] = {k: self._block(keys == k) for k in sorted(set(keys.tolist()))}
        out["failure_reasons"] = FAILURE_HELP
        out["judge"] = {"wall_s": round(self.wall_s, 3), "iterations": int(self.iterations),
                        "kv_preemptions": int(self.kv_preemptions),
                        "requests_per_s": round(len(self.status) / self.wall_s, 1) if self.wall_s > 0 else None}
        return out
