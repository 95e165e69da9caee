"""Capacity: MaxTput per replica for each (service, GPU pool, size bucket).

The one interface through which the planner and the simulator read capacities.
Sources, in order of authority for each (service, GPU type):

1. `[[capacity]]` tables in the config: the operator said so;
2. stored profiles (`[profiles] profiles_dir`): measured beats imported beats
   estimated, newer beats older, and a profile is only used at an SLO it can
   answer for (its curve re-read, or its own SLO at least as strict);
3. an estimate from the analytical model, flagged `estimated:` in provenance;
4. otherwise the GPU type is excluded and a warning says why.

A GPU type with no capacity is therefore never planned silently.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from daemon.config import Config, ServiceConfig
from daemon.domain import BucketGrid, CapacityTable, Matrix

log = structlog.get_logger(__name__)

_KIND_RANK = {"measured": 0, "imported": 1, "estimated": 2}


@dataclass
class CapacityReport:
    """The table plus what the operator should know about how it was made."""

    table: CapacityTable
    kinds: dict[tuple[str, str], str] = field(default_factory=dict)  # (service, pool) -> config/measured/...
    warnings: list[dict] = field(default_factory=list)  # structured: {"event", "service", "gpu", "reason"}


def capacity_table(cfg: Config) -> CapacityTable:
    """Capacity for every configured service (see module docstring for the order of sources)."""
    return build_capacity(cfg).table


def build_capacity(cfg: Config, profiles_dir: str | Path | None = None) -> CapacityReport:
    from daemon.capacity.profile import load_profiles

    grid = cfg.buckets.grid()
    pdir = Path(profiles_dir if profiles_dir is not None else cfg.profiles.profiles_dir)
    profiles, errors = load_profiles(pdir)
    report = CapacityReport(CapacityTable({}))
    table: dict[tuple[str, str], Matrix] = {}
    provenance: dict[tuple[str, str], str] = {}

    def warn(event: str, service: str, gpu: str, reason: str) -> None:
        report.warnings.append({"event": event, "service": service, "gpu": gpu, "reason": reason})
        log.warning(event, service=service, gpu=gpu, reason=reason)

    for err in errors:
        warn("capacity.profile_unreadable", "*", "*", err)

    for svc in cfg.services:
        for gpu in svc.gpus:
            entries = [e for e in cfg.capacity if e.model == svc.model and e.gpu == gpu]
            if entries:
                for e in entries:
                    key = (svc.name, f"{e.gpu}x{e.gpu_count}")
                    table[key] = tuple(tuple(float(x) for x in row) for row in e.tputs)
                    provenance[key] = e.source
                    report.kinds[key] = "config"
                continue
            found = _from_profiles(cfg, svc, gpu, grid, profiles, warn)
            if found:
                for pool, (matrix, prov, kind) in found.items():
                    table[(svc.name, pool)] = matrix
                    provenance[(svc.name, pool)] = prov
                    report.kinds[(svc.name, pool)] = kind
                continue
            if not cfg.profiles.estimate_missing:
                warn("capacity.excluded", svc.name, gpu, "no [[capacity]] table or usable profile; estimates disabled")
                continue
            est = _estimate(cfg, svc, gpu, grid)
            if isinstance(est, str):
                warn("capacity.excluded", svc.name, gpu, est)
                continue
            pool, matrix, prov = est
            _warn_context(svc, gpu, grid, warn)
            table[(svc.name, pool)] = matrix
            provenance[(svc.name, pool)] = prov
            report.kinds[(svc.name, pool)] = "estimated"
            warn("capacity.estimated", svc.name, gpu, f"no profile; planning {pool} on an analytical estimate")
    # Prompts the server refuses (longer than its max_model_len) cannot be served by any pool:
    # whatever a table or profile says, their buckets carry no capacity.
    for (svc_name, pool), matrix in list(table.items()):
        svc = next(s for s in cfg.services if s.name == svc_name)
        limit = context_limit(svc)
        if limit is not None:
            table[(svc_name, pool)] = tuple(row if grid.input_edges[i] < limit else tuple(0.0 for _ in row)
                                            for i, row in enumerate(matrix))
    report.table = CapacityTable(table, provenance)
    return report


def context_limit(svc: ServiceConfig) -> int | None:
    """Tokens (prompt + output) a request of this service may have: `max_model_len`, at most the model's context."""
    from daemon.capacity.models import canonical_model, model_arch

    model_ctx = model_arch(svc.model).max_context if canonical_model(svc.model) else None
    if svc.max_model_len is None:
        return model_ctx
    return min(svc.max_model_len, model_ctx) if model_ctx else svc.max_model_len


def _same_model(a: str, b: str) -> bool:
    from daemon.capacity.models import canonical_model

    if a == b:
        return True
    ca, cb = canonical_model(a), canonical_model(b)
    return ca is not None and ca == cb


def _same_gpu(a: str, b: str) -> bool:
    from daemon.capacity.hardware import canonical_gpu

    if a == b:
        return True
    ca, cb = canonical_gpu(a), canonical_gpu(b)
    return ca is not None and ca == cb


def _from_profiles(cfg: Config, svc: ServiceConfig, gpu: str, grid: BucketGrid, profiles, warn):
    """Best usable stored profile per pool of this GPU type, mapped onto the service grid."""
    ttft, tpot = svc.slo.ttft_p99_s, svc.slo.tpot_p99_ms
    by_pool: dict[int, list] = {}
    for path, p in profiles:
        if not (_same_model(p.model, svc.model) and _same_gpu(p.gpu, gpu)):
            continue
        usable = p.at_slo(ttft, tpot)
        if usable is None:
            warn("capacity.profile_skipped", svc.name, gpu,
                 f"{path.name}: its SLO ({p.slo.label()}) is looser than the service's and it has no latency curve")
            continue
        by_pool.setdefault(p.tp, []).append((path, p, usable))
    out = {}
    for tp, cands in by_pool.items():
        cands.sort(key=lambda c: (_KIND_RANK[c[1].provenance.kind], c[1].dtype != cfg.profiles.dtype,
                                  -c[1].provenance.created.timestamp()))
        path, p, usable = cands[0]
        values, missing = usable.to_grid(grid)
        pool = f"{gpu}x{tp}"
        note = ""
        if missing:
            values, filled = _fill_uncovered(cfg, svc, gpu, tp, grid, values)
            if filled:
                note = f"; {filled} of {grid.n_input * grid.n_output} cells estimated (scaled to the profile)"
                warn("capacity.partly_estimated", svc.name, gpu, f"{path.name} covers no bucket of {filled} cells")
            else:
                note = f"; {missing} uncovered cells set to 0"
                warn("capacity.uncovered", svc.name, gpu, f"{path.name}: {missing} buckets beyond the profile set to 0")
        matrix = tuple(tuple(round(float(v or 0.0), 4) for v in row) for row in values)
        kind = p.provenance.kind
        out[pool] = (matrix, f"{kind}: {p.provenance.source} ({path.name}, {p.provenance.created.date()}){note}", kind)
    return out


def _fill_uncovered(cfg, svc, gpu, tp, grid, values):
    from daemon.capacity.estimator import EstimateError, estimate_profile

    try:
        est = estimate_profile(svc.model, gpu, tp, cfg.profiles.dtype, ttft_s=svc.slo.ttft_p99_s,
                               tpot_ms=svc.slo.tpot_p99_ms, grid=grid, engine=cfg.profiles.engine, curves=False)
    except EstimateError:
        return [[0.0 if v is None else v for v in row] for row in values], 0
    e = [[c.max_rps for c in est.cells[i * grid.n_output:(i + 1) * grid.n_output]] for i in range(grid.n_input)]
    ratios = [v / e[i][j] for i, row in enumerate(values) for j, v in enumerate(row) if v and e[i][j] > 0]
    scale = statistics.median(ratios) if ratios else 1.0
    filled = 0
    out = []
    for i, row in enumerate(values):
        new = []
        for j, v in enumerate(row):
            if v is None:
                filled += 1
                new.append(e[i][j] * scale)
            else:
                new.append(v)
        out.append(new)
    return out, filled


def _estimate(cfg: Config, svc: ServiceConfig, gpu: str, grid: BucketGrid):
    from daemon.capacity.estimator import EstimateError, estimate_profile, smallest_tp

    try:
        tp = smallest_tp(svc.model, gpu, cfg.profiles.dtype, cfg.profiles.engine)
        if tp is None:
            return f"{svc.model} in {cfg.profiles.dtype} does not fit on up to 8 x {gpu}"
        # vLLM refuses to start unless its KV cache holds one sequence of max_model_len tokens.
        from daemon.capacity.estimator import make_replica

        need = context_limit(svc) or 0
        while tp <= 8 and make_replica(svc.model, gpu, tp, cfg.profiles.dtype, cfg.profiles.engine
                                       ).kv_capacity_tokens < need:
            tp *= 2
        if tp > 8:
            return (f"{svc.model} with max_model_len {need} does not fit on up to 8 x {gpu} "
                    "(its KV cache cannot hold one sequence that long)")
        p = estimate_profile(svc.model, gpu, tp, cfg.profiles.dtype, ttft_s=svc.slo.ttft_p99_s,
                             tpot_ms=svc.slo.tpot_p99_ms, grid=grid, engine=cfg.profiles.engine, curves=False)
    except EstimateError as e:
        return f"no profile and cannot estimate: {e}"
    values, _ = p.to_grid(grid)
    matrix = tuple(tuple(round(float(v or 0.0), 4) for v in row) for row in values)
    return f"{gpu}x{tp}", matrix, f"estimated: {p.provenance.source} [{p.engine}, {p.dtype}]"


def _warn_context(svc: ServiceConfig, gpu: str, grid: BucketGrid, warn) -> None:
    """Buckets of requests longer than the model's context window: the estimate cannot make them servable."""
    from daemon.capacity.models import canonical_model, model_arch

    if canonical_model(svc.model) is None:
        return
    ctx = context_limit(svc) or model_arch(svc.model).max_context
    if grid.input_edges[-1] > ctx:
        warn("capacity.beyond_context", svc.name, gpu,
             f"{svc.model} serves at most {ctx} tokens (max_model_len); buckets above it get no capacity")
