"""Policies a replay can run behind the same loop, to compare this project with what users run instead.

- `static`: the best single GPU type, on-demand, sized for the peak, held (held.py);
- `reactive`: SkyServe's RequestRateAutoscaler on one on-demand GPU type (skyserve.py);
- `spothedge`: SkyServe's FallbackRequestRateAutoscaler + DynamicFallbackSpotPlacer (skyserve.py);
- `melange`: the Mélange ILP once at the peak rate and mix, on-demand, held (held.py);
- `ours_no_forecast`: this project with forecast.model = "recent_peak";
- `ours`: this project with its defaults;
- `oracle`: the integer per-window optimum with perfect knowledge, a lower bound on cost (oracle.py).

The seam is `Loop.policy` (daemon/loop/tick.py), filled by `hook.PolicyHook`; `compare.compare`
runs them all on identical inputs and judges them request by request (daemon/judge).
"""

from daemon.policies.base import Policy, PolicyDecision, PolicyView

__all__ = ["Policy", "PolicyDecision", "PolicyView"]
