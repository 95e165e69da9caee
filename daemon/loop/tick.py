"""One tick of the control loop, top to bottom:

    observe   -> provider truth synced, new demand windows and their cursors stored (txn 1)
    liveness  -> launches never healthy, drains held too long, terminations never confirmed (pure)
    forecast  -> demand at the horizon per service                                       (pure)
    plan      -> target fleet and routing table, or the last plan while nothing moved     (pure)
    reconcile -> actions, rate-limited and within the dollar cap                          (pure)
    record    -> the decision and every intent, before any effect                        (txn 2)
    apply     -> provider calls; each result recorded as it comes                        (I/O)
    finish    -> the decision's outcome and costs; routes and endpoints published       (txn 3)

Before all of it, `lead`: with several daemons on one store only the holder of
the leader lease ticks; a standby skips the tick, and a daemon that has just
become leader starts from the store (daemon/loop/guard.py). Every write
transaction above is fenced by the lease, and every launch or terminate is
preceded by a lease check, so a daemon that lost its lease can neither record
an intent nor call the provider; those checks also feed the systemd watchdog.

The clock is injected: the same code runs under fleetd in wall time and under
`fleetctl simulate` in virtual time. A failing step never escapes the tick: it
is logged, recorded (decision outcome `failed`, an alert) and the next tick runs.
What a tick carries to the next lives in `LoopState` (daemon/loop/state.py).
Forecast and plan together are `decide`; a comparison replay puts a baseline
policy in their place (`Loop.policy`, daemon/policies/).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Callable

import structlog

from daemon import crashpoint
from daemon.capacity import capacity_table
from daemon.config import Config
from daemon.demand.source import DemandPoll, DemandSource
from daemon.domain import CapacityTable, DemandForecast, Market, Plan
from daemon.lifecycle import BILLABLE, TERMINAL, Reason, State
from daemon.loop.guard import Guard, LeaseLost
from daemon.loop.decide import (
    FleetState, build_plan_inputs, forecast_all, forecast_dict, plan_basis, plan_dict, plan_still_fits,
    refit_forecasts, reused,
)
from daemon.loop.liveness import FAILURE_REASONS, SUCCESS_REASONS, Liveness, liveness, market_backoff
from daemon.loop.no_capacity import services_without_capacity
from daemon.loop.reconcile import Action, ActionKind, Reconciliation, reconcile
from daemon.loop.state import LoopState, history_since
from daemon.loop.sync import SyncResult, sync_from_provider
from daemon.plan import PlanInputs, plan
from daemon.store.repo import (
    Store, cooldown_offerings, fleet_instance, hazard_per_location, offering_of, on_demand_reference,
)
from providers.base import FailureKind, LaunchError, LaunchRequest, Provider, ProviderInstance

log = structlog.get_logger("fleet.tick")

_FAILURE_REASON = {
    FailureKind.NO_CAPACITY: Reason.NO_CAPACITY,
    FailureKind.QUOTA: Reason.QUOTA,
}


@dataclass
class Loop:
    """Everything a tick needs, injected (daemon/wiring.py builds it from config)."""

    cfg: Config
    store: Store
    provider: Provider
    sources: dict[str, DemandSource]
    clock: Callable[[], datetime]
    capacity: CapacityTable | None = None
    state: LoopState = field(default_factory=LoopState)
    # Who decides the target fleet and its routing table: None is this project (`decide`:
    # forecast, then plan); a comparison replay plugs in a baseline (daemon/policies/hook.py).
    # Same signature as `decide`; everything else in the tick stays the same code.
    policy: Callable[..., tuple[dict[str, DemandForecast], PlanInputs, Plan]] | None = None
    guard: Guard = field(default_factory=Guard)  # the leader lease and the watchdog (fleetd sets them)
    gateway: object | None = None  # daemon.gateway.Gateway, kept in step after each applied tick

    def __post_init__(self) -> None:
        if self.capacity is None:
            self.capacity = capacity_table(self.cfg)

    def refit(self, now: datetime | None = None) -> None:
        """The forecast refit job: fit on a snapshot of the history, outside the state's lock."""
        now = now or self.clock()
        history = self.state.history_snapshot()
        if history is None:
            with self.store.session() as s:
                history = load_history(self.cfg, s, now)
        states, last = self.state.forecast_inputs()
        fitted = refit_forecasts(self.cfg, history, now, states, last)
        crashpoint.hit("refit.during")
        self.state.set_forecast_states(fitted)


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
    windows: tuple = ()  # the demand windows this tick observed (the replay judges them)


@dataclass(frozen=True)
class Observation:
    """What observe found: provider truth, new demand, the fleet and markets as the store has them."""

    listed: tuple[ProviderInstance, ...]
    prices_read_at: datetime | None
    offerings: tuple
    polls: tuple[DemandPoll, ...]
    sync: SyncResult
    history: dict[str, list]
    fleet: FleetState
    paused: bool = False  # policy.paused, or `fleetctl pause` as the store says at this tick

    @property
    def windows(self) -> list:
        return [w for p in self.polls for w in p.windows]


# -- the pipeline ----------------------------------------------------------------------------

def run_tick(loop: Loop) -> TickResult:
    now = loop.clock()
    t0 = time.perf_counter()
    crashpoint.hit("tick.start")
    decision_id = None
    try:
        if not lead(loop, now):
            return _standby(loop, now)
        obs = observe(loop, now)
        live = liveness(obs.fleet.fleet, now, loop.cfg.policy)
        forecasts, inputs, the_plan = (loop.policy or decide)(loop, obs, live, now)
        rec = reconcile_phase(loop, obs, live, the_plan, now)
        mode = "paused" if obs.paused else "dry_run" if loop.cfg.policy.dry_run else "apply"
        decision_id, final = record_intent(loop, obs, live, forecasts, inputs, the_plan, rec, mode, now)
        launches = terminations = 0
        if not final:
            loop.state.store_changed()  # intents and provider answers are transitions
            launches, terminations = apply(loop, obs, rec, now, decision_id)
        return finish(loop, obs, forecasts, the_plan, rec, mode, launches, terminations, decision_id, final, now, t0)
    except LeaseLost as e:  # another daemon leads now: stop here, write nothing more, leave the intents to it
        return _lease_lost(loop, now, decision_id, e)
    except Exception as e:  # a failing tick must not stop the loop (DESIGN-NOTES: no asserts in the loop)
        return _record_failure(loop, now, decision_id, e)


# -- lead -------------------------------------------------------------------------------

def lead(loop: Loop, now: datetime) -> bool:
    """Leader or standby for this tick. A daemon that has just become leader starts from the store:
    decisions a dead leader left `started` are closed, the demand sources go on from the
    cursors it committed, and the loop's caches are dropped (they were the standby's, stale)."""
    if not loop.guard.lead():
        return False
    crashpoint.hit("lease.after_refresh")
    token = loop.guard.token
    if token is not None and token != loop.state.led_with:
        with loop.store.session() as s:
            loop.guard.fence(s)
            n = Store.close_interrupted_decisions(s, now)
            cursors = Store.cursors(s)
        for name, src in loop.sources.items():
            kind, cursor = cursors.get(name, (None, None))
            if kind == src.kind:
                src.resume(cursor)
        loop.state.reset()
        loop.state.led_with = token
        log.info("leading", token=token, holder=loop.guard.leadership.holder)
        if n:
            log.warning("interrupted_decisions_closed", count=n)
    return True


def _standby(loop: Loop, now: datetime) -> TickResult:
    lp = loop.guard.leadership
    holder = None
    if lp is not None and lp.last_error is None:
        from daemon.store.lease import current_lease

        try:
            with loop.store.session() as s:
                row = current_lease(s, lp.name)
                holder = row.holder if row is not None else None
        except Exception:
            holder = None
    log.info("standby", leader=holder, error=lp.last_error if lp is not None else None)
    return TickResult(None, now, "standby", {}, None, (), {})


# -- observe ------------------------------------------------------------------------------

def observe(loop: Loop, now: datetime) -> Observation:
    cfg, store, provider = loop.cfg, loop.store, loop.provider
    listed = tuple(provider.list())
    # Every tick: providers cache their catalog and re-read it on their own schedule
    # (SkyPilot: provider.skypilot.catalog_refresh_s). Instances keep the price in
    # effect at their launch; the decision records when the prices it used were read.
    snap = provider.offerings_snapshot()
    crashpoint.hit("observe.after_list")
    polls, problems = poll_demand(loop, now)
    unavailable = provider.unavailable_markets(now)
    listing = _listing_key(listed)
    with store.session() as s:
        loop.guard.fence(s)
        paused = cfg.policy.paused or Store.paused(s)
        if loop.state.unchanged_since_sync(listing):
            # Same provider answer as the last sync, and no transition written since: syncing
            # again would change nothing (the usual quiet tick; no instance query).
            sync = SyncResult(rows=list(loop.state.synced_rows))
        else:
            sync = sync_from_provider(s, list(listed), now)
        for p in polls:
            Store.add_demand_windows(s, list(p.windows))
            Store.save_cursor(s, p.service, loop.sources[p.service].kind, p.cursor, now)
        for svc, msg in problems:
            Store.alert(s, now, "warning", "demand_input", msg[:4000], service=svc)
        loaded = None if loop.state.has_history() else load_history(cfg, s, now)
        # The usual tick has nothing to clean up: the fleet as synced is the fleet (one transaction).
        # Market events change only by transitions this loop writes: read again after any.
        if sync.transitions or sync.orphans:
            loop.state.store_changed()
        if loop.state.market_events is None:
            loop.state.market_events = Store.events_since(s, now - market_lookback(cfg), MARKET_REASONS)
        rows = [r for r in sync.rows if r.state not in TERMINAL]
        fleet = None if sync.orphans else read_fleet_state(cfg, s, now, list(snap.offerings), unavailable,
                                                           rows=rows, events=loop.state.market_events)
        if not (sync.transitions or sync.orphans) and not _unlisted(rows, listed):
            loop.state.remember_sync(listing, rows)
        crashpoint.hit("observe.before_commit")
    crashpoint.hit("observe.after_commit")
    # The windows and cursors are committed: only now may the sources move.
    for p in polls:
        loop.sources[p.service].commit(p)
        if p.size_samples:  # a gateway log: what its bytes-per-token fit learns from
            loop.state.size_tracker(cfg).add(p.service, p.size_samples)
    crashpoint.hit("observe.after_cursor_commit")
    clean_up(loop, sync, snap.offerings, now)
    if fleet is None:  # orphans were adopted or terminated: read the fleet again
        with store.session() as s:
            fleet = read_fleet_state(cfg, s, now, list(snap.offerings), unavailable)
    new = [w for p in polls for w in p.windows]
    history = loop.state.extend_history(loaded, [] if loaded is not None else new,
                                        history_since(now, cfg.loop.history_s))
    return Observation(listed, snap.read_at, snap.offerings, tuple(polls), sync, history, fleet, paused)


def _listing_key(listed) -> tuple:
    return tuple(sorted((p.name, str(p.status), p.offering_key, p.endpoint, p.healthy, str(p.failure), p.since)
                        for p in listed))


def _unlisted(rows, listed) -> bool:
    """Whether a started instance is missing from the listing: the sync's grace rules then
    depend on the clock, so the next tick must sync again."""
    names = {p.name for p in listed}
    return any(r.name not in names and r.state != State.REQUESTED for r in rows)


def poll_demand(loop: Loop, now: datetime) -> tuple[list[DemandPoll], list[tuple[str, str]]]:
    """Each source's new windows. A failing source costs its service this tick's windows, not the tick."""
    polls, problems = [], []
    for svc, src in loop.sources.items():
        try:
            p = src.poll(now)
        except Exception as e:  # a feed down, a file unreadable: alert, keep the history we have
            msg = f"{svc}: demand source {src.kind} failed: {e}" if "DemandInputError" in type(e).__name__ \
                else f"{svc}: demand source {src.kind} failed: {type(e).__name__}: {e}"
            log.warning("demand_source_failed", service=svc, kind=src.kind, error=msg)
            problems.append((svc, msg))
            continue
        for msg in p.problems:
            log.warning("demand_input", service=svc, kind=src.kind, problem=msg)
        if p.problems:
            more = f" (+{len(p.problems) - 1} more)" if len(p.problems) > 1 else ""
            problems.append((svc, f"{svc}: {p.problems[0]}{more}"))
        polls.append(p)
    return polls, problems


def load_history(cfg: Config, s, now: datetime) -> dict[str, list]:
    grid = cfg.buckets.grid()
    since = history_since(now, cfg.loop.history_s)
    return {svc.name: Store.demand_history(s, svc.name, grid, since) for svc in cfg.services}


MARKET_REASONS = frozenset({Reason.PREEMPTED}) | FAILURE_REASONS | SUCCESS_REASONS


def market_lookback(cfg: Config) -> timedelta:
    pol = cfg.policy
    return max(timedelta(hours=24), timedelta(seconds=2 * pol.max_market_cooldown_s),
               timedelta(seconds=pol.market_cooldown_s), timedelta(seconds=cfg.loop.tick_interval_s * 2))


def read_fleet_state(cfg: Config, s, now: datetime, offerings: list, provider_unavailable=frozenset(),
                     rows: list | None = None, events: list | None = None) -> FleetState:
    """`rows`: the non-terminal instances, when the caller has just read them in this session;
    `events`: the market events since `now - market_lookback(cfg)` or earlier, when known."""
    if rows is None:
        rows = Store.instances(s, states=frozenset(State) - TERMINAL)
    pol = cfg.policy
    day = timedelta(hours=24)
    cooldown = timedelta(seconds=pol.market_cooldown_s)
    recent = timedelta(seconds=cfg.loop.tick_interval_s * 2)
    lookback = market_lookback(cfg)
    # One query for every market rule below (this runs every tick), or none when known.
    if events is None:
        events = Store.events_since(s, now - lookback, MARKET_REASONS)
    else:
        events = [e for e in events if e.at >= now - lookback]
    preempted = [e for e in events if e.reason == Reason.PREEMPTED]
    backoff = market_backoff([(e.at, e.reason, e.offering_key) for e in events
                              if e.reason in FAILURE_REASONS or e.reason in SUCCESS_REASONS], pol)
    lost = [e for e in events if e.at >= now - recent
            and e.reason in (Reason.PREEMPTED, Reason.LAUNCH_FAILED, Reason.NO_CAPACITY)]
    # A spot failure or loss cools its whole location (SkyServe's SpotHedge marks the zone);
    # a market that keeps failing backs off exponentially on top.
    cooling = [e for e in events if e.at >= now - cooldown and e.market == str(Market.SPOT)
               and (e.reason == Reason.PREEMPTED or e.reason in FAILURE_REASONS)]
    unavailable = (cooldown_offerings(cooling, offerings)
                   | {k for k, b in backoff.items() if b.until > now} | frozenset(provider_unavailable))
    return FleetState(
        fleet=[fleet_instance(r) for r in rows], unavailable=frozenset(unavailable),
        preemptions_per_hour=hazard_per_location([e for e in preempted if e.at >= now - day], day),
        recently_lost=Counter(e.service for e in lost), backoff=backoff,
    )


def clean_up(loop: Loop, sync: SyncResult, offerings, now: datetime) -> None:
    """Release what lost instances may still hold; adopt or terminate orphans (best effort).

    A failed or preempted launch can still hold a cluster on the provider
    (SkyPilot keeps an INIT cluster after a failed start): terminate is
    idempotent, so it is always called. Orphans (ours by name, unknown to the
    store) are terminated, or with provider.skypilot.orphans = "adopt" recorded
    as instances of their service when their offering is known. Each orphan is
    alerted once.
    """
    for name in sync.lost:
        _terminate_quietly(loop, name)
    if not sync.orphans:
        return
    adopt = loop.cfg.provider.kind == "skypilot" and loop.cfg.provider.skypilot.orphans == "adopt"
    services = {s.name for s in loop.cfg.services}
    offer_map = {o.key: o for o in offerings}
    adoptable = [p for p in sync.orphans if adopt and p.name.rsplit("-", 1)[0] in services
                 and offer_map.get(p.offering_key or "") is not None]
    # Provider calls never run inside a transaction: a slow one would hold the lease's share lock.
    for p in sync.orphans:
        if p not in adoptable:
            _terminate_quietly(loop, p.name)
    with loop.store.session() as s:
        loop.guard.fence(s)
        for p in sync.orphans:
            if p in adoptable:
                service = p.name.rsplit("-", 1)[0]
                iid = Store.next_instance_id(s, service)
                row = Store.create_instance(s, instance_id=iid, name=p.name, service=service,
                                            provider=loop.provider.name, offering=offer_map[p.offering_key],
                                            at=now, reason=Reason.ORPHAN, decision_id=None)
                s.flush()
                to = State.RUNNING if p.status.value == "running" else State.PROVISIONING
                Store.transition(s, row, to, Reason.ORPHAN, now, "adopted: found on the provider, unknown to the store")
                if p.endpoint:
                    row.endpoint = p.endpoint
                what = f"adopted as {iid}"
            else:
                what = "terminated" if not adopt else "terminated (cannot adopt: unknown service or offering)"
            Store.alert_once(s, now, "warning", "orphan", p.name,
                             f"{p.name}: found on the provider, unknown to the store: {what}")


def _terminate_quietly(loop: Loop, name: str) -> None:
    loop.guard.before_call()  # LeaseLost goes up: the tick stops
    try:
        loop.provider.terminate(name)
    except Exception as e:  # retried: the next sync lists it again
        log.warning("cleanup_failed", instance=name, error=f"{type(e).__name__}: {e}")


# -- forecast, plan, reconcile (pure, around the loop state) -----------------------------------

def decide(loop: Loop, obs: Observation, live: Liveness, now: datetime) -> tuple[dict[str, DemandForecast],
                                                                                PlanInputs, Plan]:
    """This project's decision: the demand forecast, then the plan for it."""
    forecasts = forecast_phase(loop, obs, now)
    inputs, the_plan = plan_phase(loop, obs, live, forecasts, now)
    return forecasts, inputs, the_plan


def forecast_phase(loop: Loop, obs: Observation, now: datetime) -> dict[str, DemandForecast]:
    states, _ = loop.state.forecast_inputs()
    forecasts = forecast_all(loop.cfg, obs.history, now, states)
    loop.state.set_last_forecasts(forecasts)
    return forecasts


def plan_phase(loop: Loop, obs: Observation, live: Liveness, forecasts: dict[str, DemandForecast],
               now: datetime) -> tuple[PlanInputs, Plan]:
    # Launches that timed out are capacity no more, and their markets are out from now.
    gone = {a.instance_id for a in live.actions}
    fleet = FleetState([f for f in obs.fleet.fleet if f.id not in gone],
                       obs.fleet.unavailable | {a.offering_key for a in live.actions
                                                if a.reason is Reason.LAUNCH_TIMEOUT},
                       obs.fleet.preemptions_per_hour, obs.fleet.recently_lost, obs.fleet.backoff)
    inputs = build_plan_inputs(loop.cfg, now, forecasts, loop.capacity, list(obs.offerings), fleet)
    basis = plan_basis(inputs)
    last = loop.state.plan_memory()
    if last is not None and plan_still_fits(last[1], basis, loop.cfg):
        return inputs, reused(last[0])
    the_plan = plan(inputs, loop.cfg.solver)
    loop.state.remember_plan((the_plan, basis) if the_plan.acceptable else None)
    return inputs, the_plan


def reconcile_phase(loop: Loop, obs: Observation, live: Liveness, the_plan: Plan, now: datetime) -> Reconciliation:
    gone = {a.instance_id for a in live.actions}
    lost = Counter(obs.fleet.recently_lost)
    for a in live.actions:
        if a.reason is Reason.LAUNCH_TIMEOUT:
            lost[a.service] += 1  # its replacement is a replacement
    offer_map = {o.key: o for o in obs.offerings}
    # Drains the gateway says still hold connections are not terminated yet (liveness forces
    # them after policy.drain_timeout_s).
    rec = reconcile(the_plan, [f for f in obs.fleet.fleet if f.id not in gone], offer_map, loop.cfg.policy, now, lost,
                    hold_drains=loop.state.drain_busy)
    return replace(rec, actions=tuple(live.actions) + rec.actions)


# -- record intent (txn 2) --------------------------------------------------------------------

def record_intent(loop: Loop, obs: Observation, live: Liveness, forecasts: dict[str, DemandForecast],
                  inputs: PlanInputs, the_plan: Plan, rec: Reconciliation, mode: str, now: datetime) -> tuple[int, bool]:
    """The decision and every intent, in one transaction, before the provider hears of any.

    Returns (decision id, final): a tick with nothing to apply (no action, no intent left
    over; or a dry run / pause) is complete here, and `finish` has nothing to write.
    """
    cfg = loop.cfg
    new_windows = obs.windows
    final = mode != "apply" or not (rec.actions or _pending(obs))
    with loop.store.session() as s:
        decision_id = Store.insert_decision(
            s, now, plan_status=the_plan.status, solver=the_plan.solver, solve_seconds=the_plan.solve_seconds,
            planned_cost_per_hour=the_plan.cost_per_hour, forecast_rps=sum(f.rate_rps for f in forecasts.values()),
            observed_rps=sum(w.rate for w in new_windows) if new_windows else None,
            forecast={k: forecast_dict(v) for k, v in forecasts.items()}, plan=plan_dict(the_plan),
            actions=[a.as_dict() for a in rec.actions],
            inputs={
                "new_windows": len(new_windows), "unavailable": sorted(inputs.unavailable),
                "prices_read_at": obs.prices_read_at.isoformat() if obs.prices_read_at else None,
                "offerings": len(obs.offerings), "fleet": dict(Counter(f.state for f in obs.fleet.fleet)),
                "synced": obs.sync.summary(), "mode": mode,
                "skipped_for_budget": rec.skipped_for_budget, "skipped_for_limits": rec.skipped_for_limits,
                "held_for_make_before_break": rec.held_for_make_before_break,
                "backoff": {k: b.failures for k, b in sorted(obs.fleet.backoff.items())},
                "lease": loop.guard.describe(),
            },
            **({"outcome": "applied" if mode == "apply" else mode, "fleet_cost_per_hour": _billable(obs)}
               if final else {}),
        )
        # A service no offering can serve: alerted every tick, never a silent $0 fleet (issue 13).
        starved = services_without_capacity(cfg, loop.capacity, obs.offerings, obs.fleet.fleet)
        _decision_alerts(s, cfg, obs, live, the_plan, rec, now, decision_id, starved)
        if mode == "apply":
            _record_intents(s, loop, rec.actions, obs.offerings, now, decision_id)
        loop.guard.fence(s)  # last, so the lease is held (share-locked on PostgreSQL) until the commit
        crashpoint.hit("record.before_commit")
    crashpoint.hit("record.after_commit")
    return decision_id, final


def _pending(obs: Observation) -> bool:
    """Intents in the store that apply must carry out (a crash can leave them)."""
    return any(State(f.state) in (State.REQUESTED, State.TERMINATING) for f in obs.fleet.fleet)


def _billable(obs: Observation) -> float:
    return sum(f.offering.price_per_hour for f in obs.fleet.fleet if State(f.state) in BILLABLE)


def _decision_alerts(s, cfg: Config, obs: Observation, live: Liveness, the_plan: Plan, rec: Reconciliation,
                     now: datetime, decision_id: int, starved: dict[str, str] | None = None) -> None:
    starved = starved or {}
    for svc, why in starved.items():
        Store.alert(s, now, "critical", "no_capacity", f"{svc} can get no capacity at all: {why}; it runs no "
                    "instance whatever its demand and min_replicas", service=svc, decision_id=decision_id)
    if rec.skipped_for_budget:
        Store.alert(s, now, "critical", "budget",
                    f"{rec.skipped_for_budget} launch(es) not made: budget {cfg.policy.budget_per_hour} $/h",
                    decision_id=decision_id)
    # Plan alerts once per solve, not again on every tick that reuses the plan.
    fresh = the_plan.status != "reused"
    for svc, rps in (the_plan.unserved_rps.items() if fresh else ()):
        Store.alert(s, now, "warning", "unserved", f"{rps:.2f} req/s of {svc} cannot be served: "
                    + "; ".join(the_plan.notes), service=svc, decision_id=decision_id)
    # Not "bound by min_replicas" for a service that has no capacity at all: the alert above says why.
    binding = [b for b in the_plan.binding if b.split(":")[1:2] not in [[n] for n in starved]]
    if fresh and binding:
        Store.alert(s, now, "warning", "binding_limit",
                    f"plan bound by {', '.join(binding)}: " + "; ".join(the_plan.notes),
                    decision_id=decision_id)
    if not the_plan.acceptable:
        Store.alert(s, now, "critical", "plan_unusable",
                    f"planner status {the_plan.status}; current fleet kept: " + "; ".join(the_plan.notes),
                    decision_id=decision_id)
    for a in live.actions:
        Store.alert(s, now, "warning", str(a.reason), f"{a.instance_id}: {a.detail}", a.service, decision_id,
                    subject=a.instance_id)
    for inst in live.stuck_terminations:
        Store.alert_once(s, now, "critical", "terminate_stuck", inst.name,
                         f"{inst.name}: termination asked at {inst.state_since.isoformat()} is not confirmed by the "
                         f"provider after {cfg.policy.terminate_timeout_s:.0f} s; retried every tick (still billed)",
                         inst.service, decision_id)
    for key, b in obs.fleet.backoff.items():
        if b.failures >= cfg.policy.backoff_alert_after:
            Store.alert_once(s, now, "warning", "market_backoff", f"{key}#{b.failures}",
                             f"{key}: {b.failures} launch failures in a row; no launch there until "
                             f"{b.until.isoformat()}", decision_id=decision_id)


def _record_intents(s, loop: Loop, actions: tuple[Action, ...], offerings, now: datetime, decision_id: int) -> None:
    """Write every action's intent. Launches become REQUESTED rows with their deterministic names."""
    from daemon.store.schema import Instance

    offer_map = {o.key: o for o in offerings}
    for a in actions:
        if a.kind is ActionKind.LAUNCH:
            iid = Store.next_instance_id(s, a.service)
            # The instance's name is its id: the provider adds its own marker (SkyPilot: the prefix).
            off = offer_map[a.offering_key]
            Store.create_instance(s, instance_id=iid, name=iid, service=a.service, provider=loop.provider.name,
                                  offering=off, at=now, reason=a.reason, decision_id=decision_id,
                                  on_demand_price=on_demand_reference(off, list(offerings)))
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
            Store.transition(s, row, State.TERMINATING, a.reason, now, a.detail or None, decision_id)


# -- apply ------------------------------------------------------------------------------------

def apply(loop: Loop, obs: Observation, rec: Reconciliation, now: datetime, decision_id: int) -> tuple[int, int]:
    """Call the provider for every pending intent in the store, not only this tick's.

    An intent left by a crash (REQUESTED, or TERMINATING not yet confirmed) is
    simply carried out again: launch and terminate are idempotent by name.
    """
    from daemon.store.schema import Instance

    store, provider = loop.store, loop.provider
    launches = terminations = 0
    if not rec.actions and not _pending(obs):
        return 0, 0  # nothing this tick asked for, nothing left over: no provider call, no query
    svc_model = {s.name: s.model for s in loop.cfg.services}
    with store.session() as s:
        todo = Store.instances(s, frozenset({State.REQUESTED, State.TERMINATING}))
        pending = [(r.id, r.name, r.service, offering_of(r)) for r in todo if r.state == State.REQUESTED]
        stopping = [(r.id, r.name) for r in todo if r.state == State.TERMINATING]
    for iid, name, service, off in pending:
        outcome: tuple[State, Reason, str | None]
        loop.guard.before_call()  # LeaseLost: stop; the intents stay for the new leader
        crashpoint.hit("apply.before_launch")
        try:
            provider.launch(LaunchRequest(name=name, service=service, model=svc_model.get(service, ""), offering=off))
            outcome = (State.PROVISIONING, Reason.LAUNCH_ACCEPTED, None)
            launches += 1
        except LaunchError as e:
            outcome = (State.FAILED, _FAILURE_REASON.get(e.kind, Reason.LAUNCH_FAILED), str(e))
        except Exception as e:  # provider bug or outage: the intent stays failed, recorded, not lost
            outcome = (State.FAILED, Reason.LAUNCH_FAILED, f"{type(e).__name__}: {e}")
        crashpoint.hit("apply.after_launch")
        with store.session() as s:
            loop.guard.fence(s)
            row = s.get(Instance, iid)
            if row.state == str(State.REQUESTED):
                Store.transition(s, row, outcome[0], outcome[1], now, outcome[2], decision_id)
                if outcome[0] is State.FAILED:
                    Store.alert(s, now, "warning", "launch_failed", f"{name}: {outcome[2]}", service, decision_id,
                                subject=name)
        crashpoint.hit("apply.after_launch_result")
    for iid, name in stopping:
        loop.guard.before_call()
        crashpoint.hit("apply.before_terminate")
        try:
            provider.terminate(name)
            terminations += 1
        except Exception as e:  # retried next tick: terminate is idempotent
            with store.session() as s:
                loop.guard.fence(s)
                Store.alert(s, now, "warning", "terminate_failed", f"{name}: {type(e).__name__}: {e}",
                            decision_id=decision_id, subject=name)
        crashpoint.hit("apply.after_terminate")
    return launches, terminations


# -- finish (txn 3) -------------------------------------------------------------------------

def finish(loop: Loop, obs: Observation, forecasts: dict[str, DemandForecast], the_plan: Plan, rec: Reconciliation,
           mode: str, launches: int, terminations: int, decision_id: int, final: bool, now: datetime,
           t0: float) -> TickResult:
    outcome = "applied" if mode == "apply" else mode
    running: Counter = Counter()
    serving = []
    if final:  # nothing was applied: the fleet is as observed, and the decision is written
        fleet = [(f.name, f.service, f.offering.pool, f.offering.key, f.endpoint, str(f.state))
                 for f in obs.fleet.fleet]
    else:
        with loop.store.session() as s:
            loop.guard.fence(s)
            live = Store.fleet_rows(s)
            Store.finish_decision(s, decision_id, outcome, launches, terminations,
                                  sum(r.price_per_hour for r in live if r.state in BILLABLE))
            crashpoint.hit("finish.before_commit")
        crashpoint.hit("finish.after_commit")
        fleet = [(r.name, r.service, r.pool, r.offering_key, r.endpoint, r.state) for r in live]
    for name, service, pool, key, endpoint, state in fleet:
        if state == State.RUNNING:
            running[(service, pool)] += 1
            serving.append((name, service, pool, key, endpoint))
    if mode == "apply":
        _publish(loop, the_plan, obs, serving, now, decision_id)
        if loop.gateway is not None:
            from daemon.gateway import Replica
            from daemon.loop.gateway_step import sync_gateway

            # Instances that ended this tick are passed as gone, so a dead machine's connections are cut.
            ended = {r.name: r for r in obs.sync.rows if r.name in set(obs.sync.lost)}
            replicas = [Replica(svc, pool, name, ep, st) for name, svc, pool, _, ep, st in fleet] + [
                Replica(r.service, f"{r.gpu}x{r.gpu_count}", r.name, r.endpoint, "gone") for r in ended.values()]
            try:
                sync_gateway(loop, the_plan, replicas, now, decision_id)
            except Exception as e:  # the gateway is an edge: a failure there never fails the tick
                log.error("gateway_sync_failed", decision=decision_id, error=f"{type(e).__name__}: {e}")
    log.info("tick", decision=decision_id, outcome=outcome,
             forecast_rps=round(sum(f.rate_rps for f in forecasts.values()), 3),
             planned_cost=round(the_plan.cost_per_hour, 3), plan_status=the_plan.status,
             actions=len(rec.actions), launches=launches, terminations=terminations,
             seconds=round(time.perf_counter() - t0, 4))
    loop.guard.beat()
    crashpoint.hit("tick.end")
    return TickResult(decision_id, now, outcome, forecasts, the_plan, rec.actions, dict(running),
                      windows=tuple(obs.windows))


def _publish(loop: Loop, the_plan: Plan, obs: Observation, serving: list, now: datetime, decision_id: int) -> None:
    """Routes and healthy endpoints for a gateway; a failure to write them is logged, never fatal."""
    from daemon.loop.publish import write_endpoints
    from daemon.plan.routing import write_routing_table

    cfg = loop.cfg
    try:
        if the_plan.acceptable and cfg.solver.routes_path:
            write_routing_table(the_plan, cfg.buckets.grid(), cfg.solver.routes_path)
        if cfg.loop.endpoints_path:
            healthy = {p.name for p in obs.listed if p.healthy}
            write_endpoints(cfg.loop.endpoints_path, serving, healthy, loop.provider.name, now)
    except OSError as e:
        log.error("publish_failed", error=str(e), decision=decision_id)


def _lease_lost(loop: Loop, now: datetime, decision_id: int | None, e: LeaseLost) -> TickResult:
    """Fenced out mid-tick: nothing more is written. A decision already recorded stays `started`
    and is closed as interrupted by whoever leads next; its intents are carried out by that leader."""
    log.warning("lease_lost", decision=decision_id, error=str(e))
    return TickResult(decision_id, now, "standby", {}, None, (), {}, f"LeaseLost: {e}")


def _record_failure(loop: Loop, now: datetime, decision_id: int | None, e: Exception) -> TickResult:
    loop.state.store_changed()  # part of the tick may have committed transitions
    err = f"{type(e).__name__}: {e}"
    log.exception("tick_failed", decision=decision_id, error=err)
    try:
        with loop.store.session() as s:
            from daemon.store.schema import Decision

            loop.guard.fence(s)  # a daemon that lost its lease records nothing, not even its failure

            # The decision row may have been rolled back with the failed transaction.
            d = (s.get(Decision, decision_id) if decision_id else None) or Store.start_decision(s, now)
            d.outcome = "failed"
            d.error = err[:4000]
            Store.alert(s, now, "critical", "tick_failed", err[:4000], decision_id=d.id)
            decision_id = d.id
    except Exception:
        log.exception("tick_failure_not_recorded")
    return TickResult(decision_id, now, "failed", {}, None, (), {}, err)


# -- for `fleetctl plan`: the inputs the next tick would build, read only ----------------------

def plan_inputs_now(loop: Loop, now: datetime) -> PlanInputs:
    """PlanInputs as the next tick would build them from the store and the provider; never acts."""
    snap = loop.provider.offerings_snapshot()
    with loop.store.session() as s:
        history = load_history(loop.cfg, s, now)
        state = read_fleet_state(loop.cfg, s, now, list(snap.offerings), loop.provider.unavailable_markets(now))
    # A one-off command has no fitted state: the recent-peak rule, as a daemon's first ticks.
    forecasts = forecast_all(loop.cfg, history, now)
    return build_plan_inputs(loop.cfg, now, forecasts, loop.capacity, list(snap.offerings), state)
