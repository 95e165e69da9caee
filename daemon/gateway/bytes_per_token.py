"""From tokens to bytes: where the input-bucket edges lie in request bytes.

HAProxy sees a request's size (`req.body_size`, the Content-Length) before any of its body,
never its token count. The plan's input buckets are in tokens, so the gateway needs bytes per
token. It is fitted per service from the gateway's own log, which holds both the request
bytes and the prompt tokens vLLM reported in `usage`:

    bytes_k = overhead + r_k x tokens_k

`overhead` (the JSON envelope: model name, parameters, message wrappers) is fitted by weighted
least squares (see fit_bytes_per_token); r_k, the bytes per token of request k, varies with the text (prose,
code, other scripts). The edge of token edge e is placed at `overhead + r_q x e`, with r_q
the low `quantile` of r_k: a request of at least e tokens has at least that many bytes unless
its own r_k is below r_q, so it lands in its own bucket or a higher one, and in a lower one
with probability about q only.

Why low and not the median: landing too high costs a little efficiency (a bigger pool serves
it), landing too low can cost the request. The pools the plan gives the low buckets may run a
smaller context (`max_model_len`), vLLM answers 400 past it, and 400 is not retried; so the
edges, the top one above all, stay on the conservative side of the model's context.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from daemon.domain import BucketGrid

INT_MAX = 2**63 - 1  # the top bucket's byte range ends here (HAProxy integers are 64-bit signed)
MIN_TOKENS_FOR_RATIO = 16  # shorter prompts: the envelope dominates, their ratio says little


@dataclass(frozen=True)
class BytesPerToken:
    """A fitted (or guessed) relation between request bytes and prompt tokens of one service."""

    overhead_bytes: float
    median: float  # bytes per token of a typical request
    low: float  # the low quantile the edges use
    samples: int  # 0: a guess from configuration
    quantile: float

    @classmethod
    def guess(cls, bytes_per_token: float) -> "BytesPerToken":
        return cls(0.0, bytes_per_token, bytes_per_token, 0, 0.0)

    def edge_bytes(self, tokens: int) -> int:
        """Fewest bytes a request of `tokens` prompt tokens is taken to have (0 for 0 tokens)."""
        if tokens <= 0:
            return 0
        return max(1, int(math.floor(self.overhead_bytes + self.low * tokens)))

    def byte_edges(self, grid: BucketGrid) -> tuple[int, ...]:
        """Where each input bucket starts, in bytes: 0, then the grid's inner edges; strictly increasing.

        The grid's last edge is not one: sizes past it count in the last bucket (BucketGrid).
        """
        out = [0]
        for e in grid.input_edges[1:grid.n_input]:
            out.append(max(self.edge_bytes(e), out[-1] + 1))
        return tuple(out)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default 'linear' method)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def fit_bytes_per_token(pairs: Iterable[tuple[int, int]], quantile: float = 0.02,
                        min_samples: int = 200) -> BytesPerToken | None:
    """Fit from (request bytes, prompt tokens) pairs; None with fewer than `min_samples` usable pairs.

    Pairs with no tokens or no bytes are ignored (errors, requests without usage).
    """
    xs: list[float] = []
    ys: list[float] = []
    for b, t in pairs:
        if b is None or t is None or b <= 0 or t <= 0:
            continue
        xs.append(float(t))
        ys.append(float(b))
    if len(xs) < min_samples:
        return None
    # The spread of r_k makes the noise of bytes grow with tokens; dividing by tokens makes it
    # even: bytes/tokens = r + overhead x (1/tokens), a straight line in 1/tokens whose slope
    # is the overhead (weighted least squares with weights 1/tokens^2).
    us = [1.0 / x for x in xs]
    vs = [y / x for x, y in zip(xs, ys)]
    n = len(us)
    mu, mv = sum(us) / n, sum(vs) / n
    suu = sum((u - mu) ** 2 for u in us)
    if len(set(xs)) > 1 and suu > 0:
        overhead = sum((u - mu) * (v - mv) for u, v in zip(us, vs)) / suu
    else:  # every request had the same token count: no intercept to learn
        overhead = 0.0
    # The envelope cannot be negative, nor larger than the smallest request.
    overhead = min(max(overhead, 0.0), min(ys))
    ratios = sorted((y - overhead) / x for x, y in zip(xs, ys) if x >= MIN_TOKENS_FOR_RATIO)
    if len(ratios) < max(10, min_samples // 4):
        ratios = sorted(max(y - overhead, 1.0) / x for x, y in zip(xs, ys))
    low = _quantile(ratios, quantile)
    med = _quantile(ratios, 0.5)
    if low <= 0:
        low = min(r for r in ratios if r > 0) if any(r > 0 for r in ratios) else 1.0
    return BytesPerToken(overhead, med, low, n, quantile)


def edges_moved(current: tuple[int, ...] | None, new: tuple[int, ...], tolerance: float) -> bool:
    """Whether the bucket map should be rewritten: another grid, or an edge moved by more than `tolerance`."""
    if current is None or len(current) != len(new):
        return True
    for a, b in zip(current[1:], new[1:]):
        if abs(b - a) > tolerance * max(a, 1):
            return True
    return False


class BytesPerTokenTracker:
    """The last `window` (request bytes, prompt tokens) pairs per service, and their fit.

    What the loop keeps between ticks: feed it each tick's new gateway log records
    (`add(service, bytes_token_pairs(records, service))`), pass `fits()` to the sync.
    A service without enough pairs yet is absent, so the sync keeps its current bucket map.
    """

    def __init__(self, quantile: float = 0.02, min_samples: int = 200, window: int = 5000):
        self.quantile = quantile
        self.min_samples = min_samples
        self._pairs: dict[str, deque] = {}
        self._window = window

    def add(self, service: str, pairs: Iterable[tuple[int, int]]) -> None:
        d = self._pairs.setdefault(service, deque(maxlen=self._window))
        d.extend(pairs)

    def fit(self, service: str) -> BytesPerToken | None:
        return fit_bytes_per_token(self._pairs.get(service, ()), self.quantile, self.min_samples)

    def fits(self) -> dict[str, BytesPerToken]:
        out = {}
        for s in self._pairs:
            f = self.fit(s)
            if f is not None:
                out[s] = f
        return out
