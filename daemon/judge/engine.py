"""One replica's serving engine: continuous batching as vLLM's V1 scheduler does it.

Independent of the planner: the queue, the batch, the token budget, the KV
cache and its preemption are modelled here; only the length of one iteration
comes from the shared step-time model (`daemon.judge.steptime`).

Each iteration (vLLM v1, vllm/v1/core/sched/scheduler.py `Scheduler.schedule`):
1. running requests first, in the order they were admitted: a decoding sequence
   takes one token of the budget (`max_num_batched_tokens`), a prompt being
   prefilled takes min(what is left of it, what is left of the budget) (chunked
   prefill);
2. every scheduled token needs a KV-cache slot. When the cache cannot hold them,
   the newest running request is preempted (its blocks freed, back to the head
   of the queue; recompute: its prompt and the tokens it already produced are
   prefilled again when it is readmitted), until the rest fit;
3. if nothing was preempted, waiting requests are admitted first come first
   served while the budget lasts, running < max_num_seqs and the KV cache has
   room for the chunk; the first that does not fit stops admission.
The iteration's duration is `StepTimes.time(tokens, sampling sequences, cached
tokens read by decodes, prefill attention)`. A prompt's last chunk samples its
first token (TTFT) at the end of that iteration; each decode step then adds one
token to every decoding sequence.

Speed: between events a replica that only decodes (no prompt in progress and an
empty or blocked queue) is advanced in closed form. With B sequences reading
K0 cached tokens, iteration m costs c(B) + a * (K0 + m*B), so k iterations take
T(k) = k*c + a*(k*K0 + B*k*(k-1)/2); the next completion, the next KV-full point
and the first iteration boundary after an arrival are found without stepping.
Decode-token counts are kept as one counter per replica (`G`): a sequence that
joined at G0 needing r more tokens finishes when G reaches G0 + r.

KV accounting is in tokens plus half a block of internal fragmentation per
running sequence (vLLM allocates blocks of `--block-size` 16 tokens, its default on
CUDA); the pool size follows vLLM's memory profiling: gpu_memory_utilization x
device memory, less the weights and the activation/graph reserve, over the KV
bytes per token. No prefix caching (vLLM V1 turns it on by default, but the
traces carry no prompt text, so no reuse is known and none is assumed: the
conservative reading), no speculative decoding, no swapping to CPU.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from daemon.capacity.estimator import ACT_BYTES, WEIGHT_BYTES, Replica
from daemon.judge.steptime import StepTimes

INF = math.inf

IDLE, STEP, DECODE, DEAD = 0, 1, 2, 3


def kv_cache_tokens(rep: Replica, block_size: int = 16) -> int:
    """Tokens of KV cache a vLLM replica of this shape allocates (whole blocks).

    vLLM sizes its block pool after loading the weights and profiling a forward
    pass: gpu_memory_utilization x total memory - weights - peak activations
    (here EngineParams.activation_reserve_gb per GPU), divided by the bytes one
    block of K and V takes over all layers.
    """
    eng, a = rep.engine, rep.arch
    usable = rep.tp * (rep.gpu.memory_gb * 1e9 * eng.gpu_memory_utilization - eng.activation_reserve_gb * 1e9)
    free = usable - a.params * WEIGHT_BYTES[rep.dtype]
    per_token = 2.0 * a.layers * a.kv_heads * a.head_dim * ACT_BYTES  # K and V, fp16 cache
    blocks = int(max(0.0, free) // (per_token * block_size))
    return blocks * block_size


class Book:
    """Per-request state shared by every replica engine (plain lists: fast scalar access)."""

    __slots__ = ("inp", "out", "gen", "first", "finish", "replica", "recomputes", "served")

    def __init__(self, inp: list[int], out: list[int]):
        n = len(inp)
        self.inp = inp
        self.out = out
        self.gen = [0] * n  # tokens delivered to the client so far
        self.first = [-1.0] * n  # time of the first token (-1: none yet)
        self.finish = [-1.0] * n  # time of the last token (-1: not finished)
        self.replica = [-1] * n  # the replica that holds / held it last
        self.recomputes = [0] * n  # KV-cache preemptions suffered
        self.served = 0


class ReplicaEngine:
    """The engine of one replica, advanced lazily to the times the router asks about."""

    __slots__ = (
        "index", "st", "tok", "seq", "kv_coef", "attn_coef", "cap", "budget", "max_seqs", "frag", "max_len",
        "book", "mode", "now", "next_t", "waiting", "partial", "dec", "heap", "G", "S", "pkv", "stamp",
        "it_chunks", "it_dec", "d_K", "d_c", "d_K0", "d_B", "iterations", "preemptions", "closed_form",
    )

    def __init__(self, index: int, st: StepTimes, kv_tokens: int, book: Book, block_size: int = 16,
                 max_model_len: int | None = None, closed_form: bool = True):
        eng = st.replica.engine
        self.closed_form = closed_form  # False: step every decode iteration (the reference the tests compare to)
        self.index = index
        self.st = st
        self.tok = st.tok
        self.seq = st.seq
        self.kv_coef = st.kv_coef
        self.attn_coef = st.attn_coef
        self.cap = float(kv_tokens)
        self.budget = int(eng.max_batched_tokens)
        self.max_seqs = int(eng.max_num_seqs)
        self.frag = block_size / 2.0
        # The longest sequence it can hold at all: vLLM refuses to start with a context
        # longer than its cache, so a replica too small for the model's context serves less.
        lim = int(kv_tokens - self.frag)
        self.max_len = lim if max_model_len is None else min(int(max_model_len), lim)
        self.book = book
        self.mode = IDLE
        self.now = -INF
        self.next_t = INF
        self.waiting: deque[int] = deque()
        self.partial: list[list] = []  # [rid, computed, target] in admission order
        self.dec: dict[int, tuple] = {}  # rid -> (ctx0, G0, fin, stamp)
        self.heap: list[tuple] = []  # (fin, stamp, rid), lazily invalidated
        self.G = 0  # decode steps taken by this replica
        self.S = 0.0  # sum over decoders of (ctx0 - G0): cached decode tokens = S + B*G
        self.pkv = 0  # KV tokens held by prompts in progress
        self.stamp = 0
        self.it_chunks: list = []
        self.it_dec = 0
        self.d_K = 0
        self.d_c = 0.0
        self.d_K0 = 0.0
        self.d_B = 0
        self.iterations = 0
        self.preemptions = 0

    # ---- what the router reads ----------------------------------------------------------

    def load(self) -> int:
        """Requests it holds (queued + running): what a least-outstanding-requests gateway compares."""
        return len(self.waiting) + len(self.partial) + len(self.dec)

    def advance(self, t: float) -> None:
        """Apply every internal event at or before t."""
        while self.next_t <= t and self.next_t != INF:
            self._fire()

    def submit(self, rid: int, t: float) -> None:
        """A request arrives at time t (the caller routes only to live replicas)."""
        if self.next_t <= t:
            self.advance(t)
        self.book.replica[rid] = self.index
        mode = self.mode
        if mode == STEP:
            self.waiting.append(rid)
        elif mode == DECODE:
            if self.waiting:  # the head is blocked (KV or max_num_seqs) until a completion: so is this one
                self.waiting.append(rid)
                return
            # It is scheduled at the first iteration boundary at or after t, with whatever else
            # arrives before that boundary: the run is cut at the boundary before t and the
            # iteration in flight at t becomes an ordinary step.
            k = self._steps_until(t)
            self.waiting.append(rid)
            if k == 0:
                self._boundary()
                return
            self._decode_steps(k - 1)
            self._start_step([])
        elif mode == IDLE:
            self.now = t
            self.waiting.append(rid)
            self._boundary()
        else:
            raise RuntimeError(f"request routed to replica {self.index} after its end")

    def kill(self, t: float) -> list[int]:
        """The replica stops at t: every request it holds is returned (for a retry or a failure)."""
        self.advance(t)
        if self.mode == DECODE and t > self.now:
            k = self._steps_until(t, strictly_before=True)
            if k > 0:
                self._decode_steps(min(k, self.d_K - 1))
        book = self.book
        G = self.G
        lost = list(self.waiting)
        lost.extend(p[0] for p in self.partial)
        for rid, (_ctx0, _g0, fin, _stamp) in self.dec.items():
            book.gen[rid] = book.out[rid] - (fin - G)
            lost.append(rid)
        self.waiting.clear()
        self.partial.clear()
        self.dec.clear()
        self.heap.clear()
        self.mode = DEAD
        self.next_t = INF
        return lost

    # ---- the engine ---------------------------------------------------------------------

    def _fire(self) -> None:
        if self.mode == STEP:
            self._finish_step()
        else:  # DECODE: the closed-form run reaches its event (a completion or a full cache)
            self._decode_steps(self.d_K)
        self._boundary()

    def _free(self) -> float:
        n_run = len(self.dec) + len(self.partial)
        return self.cap - (self.S + len(self.dec) * self.G + self.pkv + self.frag * n_run)

    def _boundary(self) -> None:
        """Schedule the iteration that starts at self.now."""
        while True:
            chunks, preempted = self._schedule()
            B = len(self.dec)
            # After a preemption the queue is not admitted this step, but may be at the next.
            if chunks or (B and preempted and self.waiting and self._head_fits()):
                self._start_step(chunks)
                return
            if B:
                if self.closed_form:
                    self._start_decode()
                else:
                    self._start_step(chunks)
                return
            if self.waiting and preempted:
                continue  # everything was preempted this step; the next one readmits from the queue
            if self.waiting:  # cannot happen with max_len <= cap, kept as a guard against a stall
                raise RuntimeError(f"replica {self.index}: queue head never fits the KV cache")
            self.mode = IDLE
            self.next_t = INF
            return

    def _head_fits(self) -> bool:
        """Whether the queue head would be admitted at the next boundary (after one decode step)."""
        B = len(self.dec)
        if B + len(self.partial) >= self.max_seqs or self.budget - B <= 0:
            return False
        rid = self.waiting[0]
        book = self.book
        c = min(book.inp[rid] + book.gen[rid], self.budget - B)
        return c + self.frag <= self._free() - 2 * B

    def _schedule(self):
        """vLLM v1's schedule() on this replica's state: chunks to prefill, whether it preempted."""
        free = self._free()
        preempted = False
        while len(self.dec) > free:  # the decodes cannot all append a token
            free += self._preempt_newest()
            preempted = True
        B = len(self.dec)
        free -= B
        budget = self.budget - B
        chunks = []
        partial = self.partial
        j = 0
        while j < len(partial) and budget > 0:
            p = partial[j]
            c = min(p[2] - p[1], budget)
            while c > free and len(partial) - 1 > j:  # allocation fails: preempt from the tail
                free += self._preempt_partial_tail()
                preempted = True
            if c > free:
                free += self._preempt_partial_tail()  # that is this one
                preempted = True
                break
            chunks.append((p, c))
            free -= c
            budget -= c
            j += 1
        if not preempted:
            waiting = self.waiting
            book = self.book
            max_seqs = self.max_seqs
            frag = self.frag
            while waiting and budget > 0 and len(self.dec) + len(partial) < max_seqs:
                rid = waiting[0]
                target = book.inp[rid] + book.gen[rid]
                c = target if target < budget else budget
                if c + frag > free:
                    break
                waiting.popleft()
                p = [rid, 0, target]
                partial.append(p)
                chunks.append((p, c))
                free -= c + frag
                budget -= c
        return chunks, preempted

    def _start_step(self, chunks) -> None:
        B = len(self.dec)
        n_tok = B
        sampling = B
        attn = 0.0
        for p, c in chunks:
            c0 = p[1]
            c1 = c0 + c
            n_tok += c
            attn += 0.5 * (c1 * (c1 + 1) - c0 * (c0 + 1))  # each prompt token attends to all before it
            if c1 == p[2]:
                sampling += 1
            p[1] = c1
            self.pkv += c
        self.it_chunks = chunks
        self.it_dec = B
        t = self.tok[n_tok] + self.seq[sampling] + self.kv_coef * (self.S + B * self.G) + self.attn_coef * attn
        self.mode = STEP
        self.next_t = self.now + t
        self.iterations += 1

    def _finish_step(self) -> None:
        now = self.next_t
        self.now = now
        book = self.book
        if self.it_dec:
            self.G += 1
            self._complete(now)
        G = self.G
        done = False
        for p, _c in self.it_chunks:
            if p[1] != p[2]:
                continue
            done = True
            rid = p[0]
            self.pkv -= p[2]
            gen = book.gen[rid] + 1
            book.gen[rid] = gen
            if book.first[rid] < 0:
                book.first[rid] = now
            left = book.out[rid] - gen
            if left <= 0:
                book.finish[rid] = now
                book.served += 1
                continue
            self.stamp += 1
            fin = G + left
            self.dec[rid] = (p[2], G, fin, self.stamp)
            self.S += p[2] - G
            heapq.heappush(self.heap, (fin, self.stamp, rid))
        if done:
            self.partial = [p for p in self.partial if p[1] != p[2]]
        self.it_chunks = []

    def _complete(self, now: float) -> None:
        """Sequences whose last token came with decode step G finish at `now`."""
        heap, dec, G, book = self.heap, self.dec, self.G, self.book
        while heap and heap[0][0] <= G:
            fin, stamp, rid = heapq.heappop(heap)
            d = dec.get(rid)
            if d is None or d[3] != stamp:
                continue  # preempted since; a stale entry
            del dec[rid]
            self.S -= d[0] - d[1]
            book.gen[rid] = book.out[rid]
            book.finish[rid] = now
            book.served += 1

    def _start_decode(self) -> None:
        heap, dec = self.heap, self.dec
        while heap and (heap[0][2] not in dec or dec[heap[0][2]][3] != heap[0][1]):
            heapq.heappop(heap)
        B = len(dec)
        k1 = heap[0][0] - self.G
        k2 = int(self._free() // B)
        K = k1 if k1 < k2 else k2
        if K < 1:  # _schedule preempts until every decode has a slot: a broken invariant, not a state
            raise RuntimeError(f"replica {self.index}: KV cache over capacity at a decode boundary")
        c = self.tok[B] + self.seq[B]
        K0 = self.S + B * self.G
        self.d_K, self.d_c, self.d_K0, self.d_B = K, c, K0, B
        self.mode = DECODE
        self.next_t = self.now + K * c + self.kv_coef * (K * K0 + B * K * (K - 1) / 2.0)

    def _run_time(self, k: int) -> float:
        return k * self.d_c + self.kv_coef * (k * self.d_K0 + self.d_B * k * (k - 1) / 2.0)

    def _steps_until(self, t: float, strictly_before: bool = False) -> int:
        """In a decode run: the first k with T(k) >= t - now (or the last k with T(k) <= t - now)."""
        dt = t - self.now
        if dt <= 0:
            return 0
        a2 = self.kv_coef * self.d_B / 2.0
        b1 = self.d_c + self.kv_coef * self.d_K0 - a2
        if a2 > 0:
            x = (-b1 + math.sqrt(b1 * b1 + 4.0 * a2 * dt)) / (2.0 * a2)
        else:
            x = dt / b1
        k = max(0, int(x))
        run = self._run_time
        if strictly_before:
            while run(k + 1) <= dt:
                k += 1
            while k > 0 and run(k) > dt:
                k -= 1
            return k
        while run(k) < dt:
            k += 1
        while k > 0 and run(k - 1) >= dt:
            k -= 1
        return k

    def _decode_steps(self, k: int) -> None:
        """Take k decode-only iterations of the current run, then the run restarts from there."""
        if k <= 0:
            return
        self.now += self._run_time(k)
        self.G += k
        self.iterations += k
        self._complete(self.now)
        # Restart the run's closed form from the new origin (the caller reschedules).
        self.d_K -= k
        self.d_K0 += k * self.d_B

    def _preempt_newest(self) -> float:
        """Preempt the newest running request (vLLM: running.pop()); returns the KV tokens freed."""
        if self.partial:
            return self._preempt_partial_tail()
        newest = max(self.dec.items(), key=lambda kv: kv[1][3])
        rid, (ctx0, g0, fin, _stamp) = newest
        del self.dec[rid]
        G = self.G
        self.S -= ctx0 - g0
        book = self.book
        book.gen[rid] = book.out[rid] - (fin - G)
        book.recomputes[rid] += 1
        self.preemptions += 1
        self.waiting.appendleft(rid)
        return ctx0 + (G - g0) + self.frag

    def _preempt_partial_tail(self) -> float:
        p = self.partial.pop()
        self.pkv -= p[1]
        self.book.recomputes[p[0]] += 1
        self.preemptions += 1
        self.waiting.appendleft(p[0])
        return p[1] + self.frag
