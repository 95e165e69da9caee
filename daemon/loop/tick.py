"""One tick of the control loop, top to bottom:

    observe  -> sync from the provider's truth, store new demand windows   (I/O, txn 1)
    forecast -> demand at the horizon per service                          (pure)
    plan     -> target fleet and routing table                             (pure)
    reconcile-> actions, rate-limited and within the dollar cap            (pure)
    record   -> the decision and every intent, before any effect           (txn 2)
    apply    -> provider calls; each result recorded as it comes            (I/O)
    finish   -> the decision's outcome and costs                            (txn 3)

The clock is injected: the same code runs under fleetd in wall time and under
`fleetctl simulate` in virtual time. A failing step never escapes the tick: it
is logged, recorded (decision outcome `failed`, an alert) and the next tick runs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import structlog

from daemon.capacity import capacity_table
from daemon.config import Config
from daemon.demand.source import DemandSource
from daemon.domain import CapacityTable, DemandForecast, FleetInstance, Offering, Plan
from daemon.lifecycle import LIVE, TERMINAL, Reason, State
from daemon.loop.reconcile import Action, ActionKind, reconcile
from daemon.loop.sync import sync_from_provider
from daemon.plan import PlanInputs, ServiceDemand, plan
from daemon.store.repo import Store, cooldown_offerings, fleet_instance, hazard_per_location
from forecast.baseline import recent_peak
from providers.base import FailureKind, LaunchError, LaunchRequest, Provider

log = structlog.get_logger("fleet.tick")

_FAILURE_REASON = {
    FailureKind.NO_CAPACITY: Reason.NO_CAPACITY,
    FailureKind.QUOTA: Reason.QUOTA,
}


@dataclass
class Loop:
    """Everything a tick needs, injected: config, store, provider, demand sources, clock."""

    cfg: Config
    store: Store
    provider: Provider
    sources: dict[str, DemandSource]
    clock: Callable[[], datetime]
    capacity: CapacityTable | None = None
    _offerings: list[Offering] = field(default_factory=list)
    # Demand history per service: read from the store once, then extended with the
    # windows this loop itself records (so a tick does not re-read days of rows).
    _history: dict[str, list] | None = None
    # Fitted forecast models per service, replaced whole by refit_forecasts (never mutated).
    forecast_states: dict = field(default_factory=dict)
    last_forecasts: dict = field(default_factory=dict)
    _last_plan: tuple | None = None  # (Plan, PlanBasis) of the last solve

    def history(self) -> dict[str, list]:
        """The demand history as the last tick saw it (for the forecast refit job)."""
        return dict(self._history or {})

    def refit(self, now: datetime | None = None) -> None:
        now = now or self.clock()
        if self._history is None:
            with self.store.session() as s:
                since = now - timedelta(seconds=self.cfg.loop.history_s)
                grid = self.cfg.buckets.grid()
                self._history = {svc.name: Store.demand_history(s, svc.name, grid, since) for svc in self.cfg.services}
        self.forecast_states = refit_forecasts(self.cfg, self.history(), now, self.forecast_states,
                                               self.last_forecasts)

    def __post_init__(self) -> None:
        if self.capacity is None:
            self.capacity = capacity_table(self.cfg)


@dataclass(frozen=True)
class TickResult:
    decision_id: int | None
    at: datetime
    outcome: str
    forecasts: dict[str, DemandForecast]
    plan: Plan | None
    actions: tuple[Action, ...]
    running: dict[tuple[str, str], int]  # (service, pool) -> running replicas after the tick
    error: str | None = None


def _forecast_dict(f: DemandForecast) -> dict:
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


@dataclass(frozen=True)
class FleetState:
    """What the store says about the fleet and the markets, read once per tick."""

    fleet: list[FleetInstance]  # every non-terminal instance
    unavailable: frozenset[str]  # spot offering keys in a cooldown
    preemptions_per_hour: dict[str, float]  # location -> spot losses per hour over the last day
    recently_lost: Counter  # service -> instances lost since the last tick


def read_fleet_state(cfg: Config, s, now: datetime, offerings: list[Offering]) -> FleetState:
    rows = Store.instances(s, states=frozenset(State) - TERMINAL)
    cooldown = timedelta(seconds=cfg.policy.market_cooldown_s)
    bad = Store.recent_events(s, now - cooldown, [Reason.PREEMPTED, Reason.NO_CAPACITY])
    day = timedelta(hours=24)
    preempted_day = Store.recent_events(s, now - day, [Reason.PREEMPTED])
    lost = Store.recent_events(s, now - timedelta(seconds=cfg.loop.tick_interval_s * 2),
                               [Reason.PREEMPTED, Reason.LAUNCH_FAILED, Reason.NO_CAPACITY])
    return FleetState(
        fleet=[fleet_instance(r) for r in rows], unavailable=cooldown_offerings(bad, offerings),
        preemptions_per_hour=hazard_per_location(preempted_day, day),
        recently_lost=Counter(i.service for _, i in lost),
    )


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
        out[svc.name] = DemandForecast(fc.service, fc.at, fc.horizon_s, rate, fc.mix, fc.method, fc.quantile, details)
    return out


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
                                    lookahead_rate_rps=forecasts[svc.name].details.get("lookahead_rate_rps"))
                      for svc in cfg.services),
        capacity=capacity, offerings=tuple(offerings),
        fleet=tuple(f for f in state.fleet if State(f.state) in LIVE), policy=cfg.policy,
        unavailable=state.unavailable, preemptions_per_hour=state.preemptions_per_hour,
        lead_time_s=cfg.loop.lead_time_s, quotas=tuple(cfg.quotas),
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
        at=inputs.now, rates={d.service: d.forecast.rate_rps for d in inputs.demands},
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
    from dataclasses import replace

    return replace(p, status="reused", solve_seconds=0.0, notes=p.notes + ("demand within the replan band",))


def inputs_from_store(cfg: Config, db_url: str | None, provider: Provider | None = None,
                      now: datetime | None = None) -> PlanInputs:
    """PlanInputs as the next tick would build them, from the store (for `fleetctl plan`)."""
    from datetime import timezone

    now = now or datetime.now(timezone.utc)
    store = Store.open(db_url or cfg.store.url)
    if provider is None:
        from daemon.cli.fleetd import build_provider

        provider = build_provider(cfg, lambda: now)
    offerings = provider.offerings()
    grid = cfg.buckets.grid()
    since = now - timedelta(seconds=cfg.loop.history_s)
    with store.session() as s:
        history = {svc.name: Store.demand_history(s, svc.name, grid, since) for svc in cfg.services}
        state = read_fleet_state(cfg, s, now, offerings)
    # A one-off command has no fitted state: the recent-peak rule, as a daemon's first ticks.
    return build_plan_inputs(cfg, now, forecast_all(cfg, history, now), capacity_table(cfg), offerings, state)


def run_tick(loop: Loop) -> TickResult:
    cfg, store, provider = loop.cfg, loop.store, loop.provider
    now = loop.clock()
    grid = cfg.buckets.grid()
    t0 = time.perf_counter()
    decision_id = None
    try:
        # -- observe: provider truth first, then demand (txn 1) -------------------------
        listed = provider.list()
        # Every tick: providers cache their catalog and re-read it on their own schedule
        # (SkyPilot: provider.skypilot.catalog_refresh_s). Instances keep the price in
        # effect at their launch; the decision records when the prices it used were read.
        loop._offerings = provider.offerings()
        snapshot = getattr(provider, "offerings_snapshot", None)
        prices_read_at = snapshot().read_at.isoformat() if snapshot is not None else None
        new_windows = []
        for svc, src in loop.sources.items():
            new_windows.extend(src.poll(now))
        with store.session() as s:
            sync = sync_from_provider(s, listed, now)
            Store.add_demand_windows(s, new_windows)
            for msg in sync.alerts:
                Store.alert(s, now, "warning", "drift", msg)
        _clean_up(loop, sync, now)

        # -- read what decide needs ------------------------------------------------------
        since = now - timedelta(seconds=cfg.loop.history_s)
        with store.session() as s:
            if loop._history is None:
                loop._history = {svc.name: Store.demand_history(s, svc.name, grid, since) for svc in cfg.services}
            else:
                for w in new_windows:
                    loop._history.setdefault(w.service, []).append(w)
            history = {name: [w for w in ws if w.start >= since] for name, ws in loop._history.items()}
            loop._history = history
            observed = read_fleet_state(cfg, s, now, loop._offerings)

        # -- forecast, plan, reconcile (pure) -------------------------------------------------
        forecasts = forecast_all(cfg, history, now, loop.forecast_states)
        loop.last_forecasts = forecasts
        provider_cooldown = getattr(provider, "unavailable_markets", None)
        if provider_cooldown is not None:  # the provider's own view (SkyPilot: failed zones) adds to the store's
            observed = FleetState(observed.fleet, observed.unavailable | frozenset(provider_cooldown(now)),
                                  observed.preemptions_per_hour, observed.recently_lost)
        inputs = build_plan_inputs(cfg, now, forecasts, loop.capacity, loop._offerings, observed)
        basis = plan_basis(inputs)
        if loop._last_plan is not None and plan_still_fits(loop._last_plan[1], basis, cfg):
            the_plan = reused(loop._last_plan[0])
        else:
            the_plan = plan(inputs, cfg.solver)
            loop._last_plan = (the_plan, basis) if the_plan.acceptable else None
        fleet = observed.fleet
        offer_map = {o.key: o for o in loop._offerings}
        rec = reconcile(the_plan, fleet, offer_map, cfg.policy, now, observed.recently_lost)
        mode = "paused" if cfg.policy.paused else "dry_run" if cfg.policy.dry_run else "apply"

        # -- record the decision and every intent before any effect (txn 2) ----------------
        with store.session() as s:
            d = Store.start_decision(s, now)
            decision_id = d.id
            d.plan_status = the_plan.status
            d.solver = the_plan.solver
            d.solve_seconds = the_plan.solve_seconds
            d.planned_cost_per_hour = the_plan.cost_per_hour
            d.forecast_rps = sum(f.rate_rps for f in forecasts.values())
            d.observed_rps = sum(w.rate for w in new_windows) if new_windows else None
            d.forecast = {k: _forecast_dict(v) for k, v in forecasts.items()}
            d.plan = plan_dict(the_plan)
            d.actions = [a.as_dict() for a in rec.actions]
            d.inputs = {
                "new_windows": len(new_windows), "unavailable": sorted(inputs.unavailable),
                "prices_read_at": prices_read_at, "offerings": len(loop._offerings),
                "fleet": dict(Counter(f.state for f in fleet)), "synced": sync.summary(), "mode": mode,
                "skipped_for_budget": rec.skipped_for_budget, "skipped_for_limits": rec.skipped_for_limits,
                "held_for_make_before_break": rec.held_for_make_before_break,
            }
            if rec.skipped_for_budget:
                Store.alert(s, now, "critical", "budget",
                            f"{rec.skipped_for_budget} launch(es) not made: budget {cfg.policy.budget_per_hour} $/h",
                            decision_id=d.id)
            # Plan alerts once per solve, not again on every tick that reuses the plan.
            fresh = the_plan.status != "reused"
            for svc, rps in (the_plan.unserved_rps.items() if fresh else ()):
                Store.alert(s, now, "warning", "unserved", f"{rps:.2f} req/s of {svc} cannot be served: "
                            + "; ".join(the_plan.notes), service=svc, decision_id=d.id)
            if fresh and the_plan.binding:
                Store.alert(s, now, "warning", "binding_limit",
                            f"plan bound by {', '.join(the_plan.binding)}: " + "; ".join(the_plan.notes),
                            decision_id=d.id)
            if not the_plan.acceptable:
                Store.alert(s, now, "critical", "plan_unusable",
                            f"planner status {the_plan.status}; current fleet kept: " + "; ".join(the_plan.notes),
                            decision_id=d.id)
            if mode == "apply":
                _record_intents(s, loop, rec.actions, now, d.id)
            else:
                d.outcome = mode

        # -- apply: provider calls, each result recorded --------------------------------------
        launches = terminations = 0
        if mode == "apply":
            launches, terminations = _apply(loop, now, decision_id)
            if the_plan.acceptable and cfg.solver.routes_path:
                _publish_routes(the_plan, cfg, decision_id)

        # -- finish (txn 3) ------------------------------------------------------------------
        with store.session() as s:
            d = s.get(type(d), decision_id)
            if mode == "apply":
                d.outcome = "applied"
            d.launches = launches
            d.terminations = terminations
            d.fleet_cost_per_hour = Store.fleet_cost_per_hour(s)
            running = Counter()
            for r in Store.instances(s, states=frozenset({State.RUNNING})):
                running[(r.service, f"{r.gpu}x{r.gpu_count}")] += 1
        log.info("tick", decision=decision_id, outcome=mode if mode != "apply" else "applied",
                 forecast_rps=round(sum(f.rate_rps for f in forecasts.values()), 3),
                 planned_cost=round(the_plan.cost_per_hour, 3), plan_status=the_plan.status,
                 actions=len(rec.actions), launches=launches, terminations=terminations,
                 seconds=round(time.perf_counter() - t0, 4))
        return TickResult(decision_id, now, "applied" if mode == "apply" else mode, forecasts, the_plan,
                          rec.actions, dict(running))
    except Exception as e:  # a failing tick must not stop the loop (DESIGN-NOTES: no asserts in the loop)
        err = f"{type(e).__name__}: {e}"
        log.exception("tick_failed", decision=decision_id, error=err)
        try:
            with store.session() as s:
                from daemon.store.schema import Decision

                # The decision row may have been rolled back with the failed transaction.
                d = (s.get(Decision, decision_id) if decision_id else None) or Store.start_decision(s, now)
                d.outcome = "failed"
                d.error = err[:4000]
                Store.alert(s, now, "critical", "tick_failed", err[:4000], decision_id=d.id)
                decision_id = d.id
        except Exception:
            log.exception("tick_failure_not_recorded")
        return TickResult(decision_id, now, "failed", {}, None, (), {}, err)


def _clean_up(loop: Loop, sync, now: datetime) -> None:
    """Release what lost instances may still hold, and deal with orphans (best effort).

    A failed or preempted launch can still hold a cluster on the provider
    (SkyPilot keeps an INIT cluster after a failed start): terminate is idempotent,
    so it is always called. Orphans (our prefix, unknown to the store) are
    terminated unless provider.skypilot.orphans = "adopt" (then only alerted).
    """
    names = list(sync.lost)
    adopt = loop.cfg.provider.kind == "skypilot" and loop.cfg.provider.skypilot.orphans == "adopt"
    if not adopt:
        names += sync.orphans
    for name in names:
        try:
            loop.provider.terminate(name)
        except Exception as e:
            log.warning("cleanup_failed", instance=name, error=f"{type(e).__name__}: {e}")
    if sync.orphans:
        with loop.store.session() as s:
            Store.alert(s, now, "warning", "orphan",
                        f"{'kept (adopt)' if adopt else 'terminated'} {len(sync.orphans)} instance(s) the store "
                        f"does not know: {', '.join(sorted(sync.orphans)[:10])}")


def _publish_routes(the_plan: Plan, cfg: Config, decision_id: int) -> None:
    """The routing table for the gateway; a failure to write it is logged, never fatal."""
    from daemon.plan.routing import write_routing_table

    try:
        write_routing_table(the_plan, cfg.buckets.grid(), cfg.solver.routes_path)
    except OSError as e:
        log.error("routes_not_written", path=cfg.solver.routes_path, error=str(e), decision=decision_id)


def _record_intents(s, loop: Loop, actions: tuple[Action, ...], now: datetime, decision_id: int) -> None:
    """Write every action's intent. Launches become REQUESTED rows with their deterministic names."""
    from daemon.store.schema import Instance

    prefix = loop.cfg.provider.skypilot.cluster_prefix
    offer_map = {o.key: o for o in loop._offerings}
    for a in actions:
        if a.kind is ActionKind.LAUNCH:
            iid = Store.next_instance_id(s, a.service)
            Store.create_instance(s, instance_id=iid, name=f"{prefix}-{iid}", service=a.service,
                                  provider=loop.provider.name, offering=offer_map[a.offering_key], at=now,
                                  reason=a.reason, decision_id=decision_id)
            s.flush()
            continue
        row = s.get(Instance, a.instance_id)
        if a.kind is ActionKind.CANCEL:
            Store.transition(s, row, State.TERMINATED, Reason.CANCELLED, now, "not launched: no longer wanted", decision_id)
        elif a.kind is ActionKind.DRAIN:
            Store.transition(s, row, State.DRAINING, a.reason, now, decision_id=decision_id, drain_until=a.drain_until)
        elif a.kind is ActionKind.UNDRAIN:
            Store.transition(s, row, State.RUNNING, a.reason, now, a.detail, decision_id)
        elif a.kind is ActionKind.TERMINATE:
            Store.transition(s, row, State.TERMINATING, a.reason, now, decision_id=decision_id)


def _apply(loop: Loop, now: datetime, decision_id: int) -> tuple[int, int]:
    """Call the provider for every pending intent in the store, not only this tick's.

    An intent left by a crash (REQUESTED, or TERMINATING not yet confirmed) is
    simply carried out again: launch and terminate are idempotent by name.
    """
    from daemon.store.schema import Instance

    store, provider = loop.store, loop.provider
    launches = terminations = 0
    offer_map = {o.key: o for o in loop._offerings}
    svc_model = {s.name: s.model for s in loop.cfg.services}
    with store.session() as s:
        pending = [(r.id, r.name, r.service, r.offering_key) for r in Store.instances(s, frozenset({State.REQUESTED}))]
        stopping = [(r.id, r.name) for r in Store.instances(s, frozenset({State.TERMINATING}))]
    for iid, name, service, okey in pending:
        off = offer_map.get(okey)
        outcome: tuple[State, Reason, str | None]
        try:
            if off is None:
                raise LaunchError(FailureKind.OTHER, f"offering {okey} is no longer offered")
            provider.launch(LaunchRequest(name=name, service=service, model=svc_model.get(service, ""), offering=off))
            outcome = (State.PROVISIONING, Reason.LAUNCH_ACCEPTED, None)
            launches += 1
        except LaunchError as e:
            outcome = (State.FAILED, _FAILURE_REASON.get(e.kind, Reason.LAUNCH_FAILED), str(e))
        except Exception as e:  # provider bug or outage: the intent stays failed, recorded, not lost
            outcome = (State.FAILED, Reason.LAUNCH_FAILED, f"{type(e).__name__}: {e}")
        with store.session() as s:
            row = s.get(Instance, iid)
            if row.state == str(State.REQUESTED):
                Store.transition(s, row, outcome[0], outcome[1], now, outcome[2], decision_id)
                if outcome[0] is State.FAILED:
                    Store.alert(s, now, "warning", "launch_failed", f"{name}: {outcome[2]}", service, decision_id)
    for iid, name in stopping:
        try:
            provider.terminate(name)
            terminations += 1
        except Exception as e:  # retried next tick: terminate is idempotent
            with store.session() as s:
                Store.alert(s, now, "warning", "terminate_failed", f"{name}: {type(e).__name__}: {e}",
                            decision_id=decision_id)
    return launches, terminations
