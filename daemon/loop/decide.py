"""The pure steps of a tick: forecast, plan inputs, when to re-plan, and how a decision is recorded.

No I/O and no clock here: everything is a function of typed values, so the
same code runs live and in a replay (tick.py does the I/O around them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from daemon.config import Config
from daemon.domain import CapacityTable, DemandForecast, FleetInstance, Offering, Plan, burst_need
from daemon.lifecycle import LIVE, State
from daemon.plan import PlanInputs, ServiceDemand
from forecast.baseline import recent_peak

log = structlog.get_logger("fleet.tick")


@dataclass(frozen=True)
class FleetState:
    """What the store says about the fleet and the markets, read once per tick."""

    fleet: list[FleetInstance]  # every non-terminal instance
    unavailable: frozenset[str]  # offering keys kept out: cooldowns and back-offs
    preemptions_per_hour: dict[str, float]  # location -> spot losses per hour over the last day
    recently_lost: Counter  # service -> instances lost since the last tick
    backoff: dict = field(default_factory=dict)  # offering key -> liveness.MarketBackoff (failures in a row)


def forecast_dict(f: DemandForecast) -> dict:
    return {"service": f.service, "rate_rps": round(f.rate_rps, 4), "horizon_s": f.horizon_s,
            "method": f.method, "quantile": f.quantile, "mix": [[round(x, 4) for x in r] for r in f.mix],
            "details": f.details}


def plan_dict(p: Plan) -> dict:
    return {
        "status": p.status, "solver": p.solver, "cost_per_hour": round(p.cost_per_hour, 4),
        "solve_seconds": round(p.solve_seconds, 4), "gap": p.gap,
        "targets": [{"service": s, "offering": k, "count": n} for (s, k), n in sorted(p.targets.items())],
        "routes": [{"service": r.service, "input_bucket": r.input_bucket, "output_bucket": r.output_bucket,
                    "pool": r.pool, "weight": round(r.weight, 4)} for r in p.routes],
        "objective": p.objective,
        "utilization": {k: round(v, 4) for k, v in p.utilization.items()},
        "binding": list(p.binding), "unserved_rps": p.unserved_rps, "notes": list(p.notes),
    }


def forecast_all(cfg: Config, history: dict[str, list], now: datetime,
                 states: dict | None = None) -> dict[str, DemandForecast]:
    """Each service's demand at the horizon, at its planning quantile (pure).

    `states` holds the fitted models (fit on a schedule by `refit_forecasts`);
    without one a service gets the robust recent-peak rule. The recent peak over
    `policy.scale_down_delay_s` rides along as `lookahead_rate_rps`: the planner
    keeps capacity a dip would release when relaunching it soon costs more.
    """
    grid = cfg.buckets.grid()
    states = states or {}
    out = {}
    for svc in cfg.services:
        hist = history.get(svc.name, [])
        peak = recent_peak(hist, svc.name, now, cfg.loop.horizon_s, grid,
                           peak_window_s=max(cfg.policy.scale_down_delay_s, cfg.loop.window_s))
        if svc.forecast.model == "recent_peak":
            fc = peak
        else:
            from forecast import forecast_demand

            fc = forecast_demand(hist, now, cfg.loop.horizon_s, svc.forecast.quantile, states.get(svc.name),
                                 service=svc.name)
            if not fc.mix:  # no window yet: an empty grid, not an empty tuple
                fc = peak
        # Scale up fast, down slowly (SkyServe: up after 300 s, down after 1200 s): never
        # plan below the peak observed over policy.scale_down_delay_s. The model adds what
        # it sees coming; it cannot take capacity away sooner than the hold allows. Found
        # on the 3-day replay: a fitted p90 lagged a 3x burst for 6 minutes, and flooring
        # at the latest window alone made the fleet chase the bursts of the code trace.
        rate = max(fc.rate_rps, peak.rate_rps)
        details = {**fc.details, "lookahead_rate_rps": rate, "recent_peak_rps": peak.rate_rps}
        if rate > fc.rate_rps:
            details["held_at_recent_peak"] = True
        burst = burst_factor(hist, now, max(cfg.policy.scale_down_delay_s, cfg.loop.window_s),
                             svc.slo.ttft_p99_s, cfg.policy.burst_quantile)
        if burst is not None:
            details["burst_factor"] = round(burst, 4)
        out[svc.name] = DemandForecast(fc.service, fc.at, fc.horizon_s, rate, fc.mix, fc.method, fc.quantile, details)
    return out


def burst_factor(history: list, now: datetime, span_s: float, ttft_s: float, quantile: float) -> float | None:
    """How much above its mean rate a window's bursts make the fleet carry (pure).

    Per recent window (the last `span_s`), `burst_need` over the window's rate: the capacity
    that keeps its worst burst queueing within the TTFT objective. The `quantile` over those
    windows; None when off, or when no recent window saw single requests.
    """
    if quantile <= 0:
        return None
    since = now.timestamp() - span_s
    ratios = []
    for w in history:
        if w.start_s + w.seconds <= since or w.start_s >= now.timestamp():
            continue
        need = burst_need(w, ttft_s)
        if need is not None:
            ratios.append(need / w.rate)
    if not ratios:
        return None
    ratios.sort()
    return max(1.0, ratios[min(len(ratios) - 1, int(quantile * len(ratios)))])


def refit_forecasts(cfg: Config, history: dict[str, list], now: datetime, states: dict,
                    last: dict[str, DemandForecast] | None = None) -> dict:
    """Fit or refit the services' rate models that are due; returns the new states (pure but slow).

    Run on a schedule outside the tick (fleetd: its own scheduler job; replay: at
    its virtual times), so a slow statsmodels fit never stalls a tick. A service
    whose fit fails keeps its previous state and the error is logged.
    """
    from forecast import fit_demand, fit_due
    from forecast.rate import RateForecastConfig

    new = dict(states)
    for svc in cfg.services:
        fcfg = svc.forecast
        if fcfg.model == "recent_peak":
            continue
        hist = history.get(svc.name, [])
        if not hist:
            continue
        needs = bool(last and last.get(svc.name) and last[svc.name].details.get("needs_refit"))
        what = fit_due(states.get(svc.name), now, fcfg.refit_every_s, fcfg.reselect_every_s, needs_refit=needs)
        if what is None:
            continue
        try:
            rcfg = RateForecastConfig(budget_s=fcfg.fit_budget_s, min_history_days=fcfg.min_history_days)
            new[svc.name] = fit_demand(hist, now, horizons_s=(cfg.loop.horizon_s,), quantiles=(fcfg.quantile,),
                                       config=rcfg, model=fcfg.model,
                                       refit_of=states.get(svc.name) if what == "refit" else None)
            log.info("forecast_fitted", service=svc.name, kind=what, method=new[svc.name].details.get("method"),
                     seconds=new[svc.name].details.get("fit_seconds"))
        except Exception as e:  # a fit is an optimisation; the tick goes on with the last state
            log.error("forecast_fit_failed", service=svc.name, kind=what, error=f"{type(e).__name__}: {e}")
    return new


def build_plan_inputs(cfg: Config, now: datetime, forecasts: dict[str, DemandForecast], capacity: CapacityTable,
                      offerings: list[Offering], state: FleetState) -> PlanInputs:
    return PlanInputs(
        now=now, grid=cfg.buckets.grid(),
        demands=tuple(ServiceDemand(svc.name, forecasts[svc.name], svc.min_replicas, tuple(svc.gpus),
                                    lookahead_rate_rps=forecasts[svc.name].details.get("lookahead_rate_rps"),
                                    burst_factor=forecasts[svc.name].details.get("burst_factor") or 1.0)
                      for svc in cfg.services),
        capacity=capacity, offerings=tuple(offerings),
        fleet=tuple(f for f in state.fleet if State(f.state) in LIVE), policy=cfg.policy,
        unavailable=state.unavailable, preemptions_per_hour=state.preemptions_per_hour,
        lead_time_s=cfg.loop.lead_time_s, quotas=tuple(cfg.quotas), tick_interval_s=cfg.loop.tick_interval_s,
    )


@dataclass(frozen=True)
class PlanBasis:
    """What a plan was made for: enough to tell whether the next tick needs a new one."""

    at: datetime
    rates: dict[str, float]
    mixes: dict[str, tuple]
    fleet: tuple  # sorted (service, offering key, count) of live instances
    unavailable: frozenset[str]


def plan_basis(inputs: PlanInputs) -> PlanBasis:
    counts = Counter((i.service, i.offering.key) for i in inputs.fleet)
    return PlanBasis(
        # the rate the plan carries: a burst factor that moved is demand that moved
        at=inputs.now, rates={d.service: d.forecast.rate_rps * d.planning_factor(inputs.policy.headroom)
                              for d in inputs.demands},
        mixes={d.service: d.forecast.mix for d in inputs.demands},
        fleet=tuple(sorted((s, k, n) for (s, k), n in counts.items())), unavailable=inputs.unavailable,
    )


def plan_still_fits(old: PlanBasis, new: PlanBasis, cfg: Config) -> bool:
    """Re-solve only when something the plan depends on moved (pure).

    A new plan is made when the fleet changed under it (a loss, a launch that did
    not follow the plan), a market went into or out of cooldown, a service's
    forecast rate moved by more than `loop.replan_rate_change` or its size mix
    by more than `loop.replan_mix_change` (total variation), or the plan is older
    than `loop.replan_every_s`. Besides saving solver time this is hysteresis:
    demand wobbling inside the band does not move the fleet.
    """
    lc = cfg.loop
    if (new.at - old.at).total_seconds() >= lc.replan_every_s:
        return False
    if new.fleet != old.fleet or new.unavailable != old.unavailable or set(new.rates) != set(old.rates):
        return False
    for svc, rate in new.rates.items():
        before = old.rates[svc]
        if abs(rate - before) > lc.replan_rate_change * max(before, 1e-9) and abs(rate - before) > 1e-6:
            return False
        a, b = old.mixes.get(svc) or (), new.mixes.get(svc) or ()
        if len(a) != len(b):
            return False
        tv = 0.5 * sum(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
        if tv > lc.replan_mix_change:
            return False
    return True


def reused(p: Plan) -> Plan:
    return replace(p, status="reused", solve_seconds=0.0, notes=p.notes + ("demand within the replan band",))


