"""The request-level judge: replay every request through the fleet a policy ran.

    verdict = judge(JudgeInputs(requests, fleet, routing, grid, services))
    verdict.summary()   # attainment, p50/p90/p99 TTFT/TPOT per service and pool, failures by reason

One discrete-event pass in time order over three kinds of events: replica
health changes (ready, drain / preemption notice, end), routing-table changes,
and request arrivals. Each replica's engine (`daemon.judge.engine`) runs lazily:
it is brought up to a time only when the router asks how loaded it is, or when
it ends.

A replica that ends while holding requests hands them back: a preempted one's
requests (and a drained one's, if the drain was too short) are re-sent by the
gateway to another healthy replica of the service at that moment, up to
`max_retries` times, each time prefilling the prompt and the tokens already
streamed (recompute); with no replica to take them they fail ("preempted",
"terminated"). A preemption with notice takes the replica out of routing
notice_s before the loss, so it usually finishes what it holds.
"""

from __future__ import annotations

import time

import numpy as np

from daemon.judge.engine import DEAD, Book, ReplicaEngine, kv_cache_tokens
from daemon.judge.inputs import JudgeInputError, JudgeInputs, JudgeOptions, ReplicaSpan
from daemon.judge.router import Router
from daemon.judge.steptime import StepTimeError, step_times
from daemon.judge.verdict import CONTEXT, NO_REPLICA, PREEMPTED, SERVED, TERMINATED, Verdict

UP, DOWN, END = 0, 1, 2  # at equal times: a replica that comes up can take the retries of one that ends


def routable_windows(r: ReplicaSpan) -> list[tuple[float, float]]:
    """[start, stop) intervals in which the gateway may send `r` new requests."""
    if r.ready_at is None:
        return []
    stop = r.routing_stops_at
    stop = float("inf") if stop is None else stop
    if stop <= r.ready_at:
        return []
    windows = [(r.ready_at, stop)]
    for a, b in sorted(r.out_of_routing):
        nxt = []
        for s, e in windows:
            if b <= s or a >= e:
                nxt.append((s, e))
                continue
            if a > s:
                nxt.append((s, a))
            if b < e:
                nxt.append((b, e))
        windows = nxt
    return windows


def _engines(inputs: JudgeInputs, services: tuple[str, ...], book: Book, opts: JudgeOptions,
             max_len: list[int]) -> list[ReplicaEngine | None]:
    engines: list[ReplicaEngine | None] = []
    svc_index = {s: k for k, s in enumerate(services)}
    for k, r in enumerate(inputs.fleet):
        if r.ready_at is None:
            engines.append(None)
            continue
        spec = inputs.services[r.service]
        try:
            st = step_times(spec.model, r.gpu, r.gpu_count, spec.dtype, spec.engine)
        except StepTimeError as e:
            raise JudgeInputError(f"replica {r.name} ({r.gpu} x{r.gpu_count}, {spec.model}): {e}") from None
        kv = kv_cache_tokens(st.replica, opts.block_size)
        if kv < opts.block_size * 4:
            raise JudgeInputError(f"replica {r.name}: {spec.model} leaves no KV cache on {r.gpu_count} x {r.gpu}")
        engines.append(ReplicaEngine(k, st, kv, book, opts.block_size, max_len[svc_index[r.service]],
                                     opts.closed_form))
    return engines


def judge(inputs: JudgeInputs, options: JudgeOptions | None = None) -> Verdict:
    """Judge one policy's run request by request (see the module docstring)."""
    wall0 = time.perf_counter()
    opts = options or JudgeOptions()
    req = inputs.requests
    services = tuple(req.services) + tuple(sorted({r.service for r in inputs.fleet} - set(req.services)))
    specs = [inputs.services[s] for s in services]
    max_len = [s.context_limit() for s in specs]
    n = len(req)

    order = np.argsort(req.arrival_s, kind="stable")
    arr = req.arrival_s[order]
    inp = req.input_tokens[order]
    out = req.output_tokens[order]
    svc = req.service[order]
    edges = np.asarray(inputs.grid.input_edges)
    bucket = np.clip(np.searchsorted(edges, inp, side="right") - 1, 0, len(edges) - 2)
    need = inp + out
    too_long = need > np.asarray(max_len, dtype=np.int64)[svc]
    rng = np.random.default_rng(opts.seed)
    u = rng.random(n)
    retry_rng = np.random.default_rng([opts.seed, 1])

    book = Book(inp.tolist(), out.tolist())
    status = np.full(n, -1, dtype=np.int8)
    status[too_long] = CONTEXT
    retries = np.zeros(n, dtype=np.int16)
    fallback = np.zeros(n, dtype=bool)

    engines = _engines(inputs, services, book, opts, max_len)
    svc_index = {s: k for k, s in enumerate(services)}
    router = Router(services, inputs.grid.n_input, tuple(inputs.routing))

    events: list[tuple[float, int, int]] = []
    for k, r in enumerate(inputs.fleet):
        if engines[k] is None:
            continue
        for a, b in routable_windows(r):
            events.append((a, UP, k))
            if b != float("inf"):
                events.append((b, DOWN, k))
        if r.end_at is not None:
            events.append((r.end_at, END, k))
    events.sort()
    fleet = inputs.fleet
    max_retries = opts.max_retries

    def lose(k: int, t: float) -> None:
        e = engines[k]
        lost = e.kill(t)
        reason = PREEMPTED if fleet[k].preempted else TERMINATED
        for rid in lost:
            retries[rid] += 1
            if retries[rid] > max_retries:
                status[rid] = reason
                continue
            s = int(svc[rid])
            target, fb = router.choose(s, int(bucket[rid]), t, float(retry_rng.random()), int(need[rid]))
            if target is None:
                status[rid] = reason
                continue
            fallback[rid] |= fb
            target.submit(rid, t)

    def apply(ev) -> None:
        t, kind, k = ev
        r = fleet[k]
        e = engines[k]
        if kind == UP:
            if e.mode != DEAD:
                router.up(e, svc_index[r.service], r.pool)
        elif kind == DOWN:
            router.down(e, svc_index[r.service], r.pool)
        else:
            router.set_time(t)
            router.down(e, svc_index[r.service], r.pool)
            lose(k, t)

    n_ev = len(events)
    ei = 0
    next_ev = events[0][0] if n_ev else float("inf")
    arr_l = arr.tolist()
    svc_l = svc.tolist()
    bucket_l = bucket.tolist()
    need_l = need.tolist()
    u_l = u.tolist()
    too_long_l = too_long.tolist()
    choose = router.choose
    set_time = router.set_time
    for rid in range(n):
        t = arr_l[rid]
        if next_ev <= t:
            while ei < n_ev and events[ei][0] <= t:
                apply(events[ei])
                ei += 1
            next_ev = events[ei][0] if ei < n_ev else float("inf")
        if too_long_l[rid]:
            continue
        set_time(t)
        e, fb = choose(svc_l[rid], bucket_l[rid], t, u_l[rid], need_l[rid])
        if e is None:
            status[rid] = NO_REPLICA
            continue
        if fb:
            fallback[rid] = True
        e.submit(rid, t)
    while ei < n_ev:
        apply(events[ei])
        ei += 1
    for e in engines:
        if e is not None and e.mode != DEAD:
            e.advance(float("inf"))

    first = np.asarray(book.first)
    finish = np.asarray(book.finish)
    done = (status < 0) & (finish >= 0)
    status[done] = SERVED
    if np.any(status < 0):
        raise RuntimeError(f"judge: {int((status < 0).sum())} requests neither served nor failed")
    served = status == SERVED
    ttft = np.where(served, first - arr, np.nan)
    e2e = np.where(served, finish - arr, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(served & (out > 1), (finish - first) / np.maximum(out - 1, 1), np.nan)
    ttft_slo = np.asarray([s.ttft_slo_s for s in specs])[svc]
    tpot_slo = np.asarray([s.tpot_slo_ms for s in specs])[svc]
    meets = served & (ttft <= ttft_slo) & ((out <= 1) | (tpot * 1e3 <= tpot_slo))
    replica = np.asarray(book.replica, dtype=np.int32)
    replica[status == CONTEXT] = -1
    replica[status == NO_REPLICA] = -1

    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)
    iterations = sum(e.iterations for e in engines if e is not None)
    kv_pre = sum(e.preemptions for e in engines if e is not None)
    return Verdict(
        requests=req, fleet=fleet, ttft_s=ttft[inv], tpot_s=tpot[inv], e2e_s=e2e[inv], status=status[inv],
        replica=replica[inv], retries=retries[inv], recomputes=np.asarray(book.recomputes, dtype=np.int16)[inv],
        fallback=fallback[inv], meets_slo=meets[inv], ttft_slo_s=ttft_slo[inv], tpot_slo_ms=tpot_slo[inv],
        wall_s=time.perf_counter() - wall0, iterations=iterations, kv_preemptions=kv_pre,
    )
