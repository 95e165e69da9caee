"""The gateway: which replica a request goes to, given the plan's routing table at the time.

Independent of the planner: it reads only the routing tables the policy
published and the replicas' health over time.

- The routing table in force (the latest whose start is at or before the
  request) gives, for the request's service and input-length bucket, weighted
  pools. The router only knows the prompt's length, never the answer's.
- A pool is a candidate only while it has a healthy replica; weights are
  renormalised over the candidates and one pool is drawn with those shares.
- Within the pool, the replica holding the fewest requests (queued + running)
  gets it: least outstanding requests, as HAProxy's `leastconn` or a
  vLLM-aware gateway does; ties go round-robin (HAProxy docs, `balance
  leastconn`: "round-robin is performed within groups of servers of the same load").
- Healthy means: ready, not draining, not inside its market's preemption
  notice, not ended. A replica that is none of these never gets a request.
- When no pool of the route has a healthy replica (or the table has no route
  for the bucket, e.g. before the first plan), the request goes to the least
  loaded healthy replica of the service, as a gateway with a default backend
  would, and the fallback is counted.
- A replica whose KV cache is smaller than a request's whole sequence is
  skipped (vLLM could not have started with that context length).
"""

from __future__ import annotations

import bisect

from daemon.judge.engine import ReplicaEngine
from daemon.judge.inputs import RoutingTable


class Router:
    def __init__(self, services: tuple[str, ...], n_buckets: int, routing: tuple[RoutingTable, ...]):
        self.services = services
        svc_index = {s: k for k, s in enumerate(services)}
        self._starts = [t.start_s for t in routing]
        # Per table: (service index, bucket) -> ((pool, weight), ...) for pools with weight > 0
        self._tables: list[dict[tuple[int, int], tuple]] = []
        for t in routing:
            tbl = {}
            for (svc, bucket), weights in t.weights.items():
                if svc in svc_index and 0 <= bucket < n_buckets:
                    ws = tuple((p, w) for p, w in weights if w > 0)
                    if ws:
                        tbl[(svc_index[svc], bucket)] = ws
            self._tables.append(tbl)
        self._current: dict = {}
        self._next = 0
        self.routable: dict[tuple[int, str], list[ReplicaEngine]] = {}
        self.by_service: list[list[ReplicaEngine]] = [[] for _ in services]
        self.fallbacks = 0
        self._rr = 0

    # ---- time and health -----------------------------------------------------------------

    def set_time(self, t: float) -> None:
        """Make the table in force at t current (times only move forward)."""
        starts = self._starts
        if self._next < len(starts) and starts[self._next] <= t:
            k = bisect.bisect_right(starts, t) - 1
            self._current = self._tables[k]
            self._next = k + 1

    def up(self, e: ReplicaEngine, svc: int, pool: str) -> None:
        self.routable.setdefault((svc, pool), []).append(e)
        self.by_service[svc].append(e)

    def down(self, e: ReplicaEngine, svc: int, pool: str) -> None:
        lst = self.routable.get((svc, pool))
        if lst and e in lst:
            lst.remove(e)
        if e in self.by_service[svc]:
            self.by_service[svc].remove(e)

    # ---- the decision ----------------------------------------------------------------------

    def choose(self, svc: int, bucket: int, t: float, u: float, need: int) -> tuple[ReplicaEngine | None, bool]:
        """(replica, whether it was a fallback) for a request arriving at t; None: no healthy replica."""
        entry = self._current.get((svc, bucket))
        cands = None
        if entry is not None:
            routable = self.routable
            if len(entry) == 1:
                cands = routable.get((svc, entry[0][0]))
            else:
                live = [(routable[(svc, p)], w) for p, w in entry if routable.get((svc, p))]
                if len(live) == 1:
                    cands = live[0][0]
                elif live:
                    x = u * sum(w for _, w in live)
                    for reps, w in live:
                        cands = reps
                        x -= w
                        if x < 0:
                            break
        fallback = not cands
        if fallback:
            cands = self.by_service[svc]
            if not cands:
                return None, True
        best = None
        best_load = 1 << 60
        m = len(cands)
        self._rr += 1
        start = self._rr % m if m > 1 else 0
        for i in range(m):  # from a rotating start: ties go round-robin, as HAProxy's leastconn
            e = cands[(start + i) % m]
            if e.next_t <= t:
                e.advance(t)
            if e.max_len < need:
                continue
            n = len(e.waiting) + len(e.partial) + len(e.dec)
            if n < best_load:
                best, best_load = e, n
        if best is None and not fallback:  # the route's replicas are all too small for it
            return self.choose_any(svc, t, need)
        if fallback and best is not None:
            self.fallbacks += 1
        return best, fallback

    def choose_any(self, svc: int, t: float, need: int) -> tuple[ReplicaEngine | None, bool]:
        best = None
        best_load = 1 << 60
        for e in self.by_service[svc]:
            if e.next_t <= t:
                e.advance(t)
            if e.max_len < need:
                continue
            n = e.load()
            if n < best_load:
                best, best_load = e, n
        if best is not None:
            self.fallbacks += 1
        return best, True
