"""The gateway kept in step with each applied tick (HAProxy through its Runtime API, issue 14).

After apply, the tick hands the gateway what it should route: the plan's routing
table (the last acceptable one while a solve is unusable), every instance with its
lifecycle state (running: serve; requested/provisioning: not yet; draining: drain;
ended: cut), and the bytes-per-token fits learnt from the gateway's own log. The sync
never raises; what it reports is acted on:

- draining replicas still holding connections are remembered, and the next tick's
  reconcile holds their termination (liveness forces it after policy.drain_timeout_s);
- errors, a HAProxy that needs a restart or does not answer are alerted once each.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from daemon.domain import Plan
from daemon.store.repo import Store

log = structlog.get_logger("fleet.gateway")


def desired_routes(the_plan: Plan, remembered: tuple | None) -> tuple:
    """The plan's routes, or the last acceptable plan's while this one is unusable (keep routing)."""
    if the_plan.acceptable and the_plan.routes:
        return tuple(the_plan.routes)
    if remembered is not None:
        return tuple(remembered[0].routes)
    return tuple(the_plan.routes)


def sync_gateway(loop, the_plan: Plan, replicas: list, now: datetime, decision_id: int | None) -> None:
    from daemon.gateway import DesiredState

    tracker = loop.state.size_tracker(loop.cfg)
    desired = DesiredState(routes=desired_routes(the_plan, loop.state.plan_memory()), replicas=tuple(replicas),
                           bytes_per_token=tracker.fits())
    res = loop.gateway.sync(desired)
    loop.state.drain_busy = frozenset(res.drain_busy)
    if res.changed or res.errors:
        log.info("gateway_synced", decision=decision_id, **res.summary())
    problems = list(res.errors)
    if res.restart_needed:
        problems.append("a pool has no backend in the running HAProxy: re-render its config "
                        "(fleetctl gateway config) and restart it")
    if not problems:
        return
    try:
        with loop.store.session() as s:
            loop.guard.fence(s)
            for p in problems:
                Store.alert_once(s, now, "warning", "gateway", p[:256], p[:4000], decision_id=decision_id)
    except Exception as e:  # an alert is best effort; the next sync reports it again
        log.warning("gateway_alert_not_recorded", error=f"{type(e).__name__}: {e}")
