"""The `prometheus` demand source: windows from Prometheus (HTTP query API), vLLM's metrics by default.

vLLM exports (vllm/engine/metrics.py): `vllm:request_success_total` (counter,
label finished_reason), and the histograms `vllm:request_prompt_tokens` and
`vllm:request_generation_tokens` (`_bucket{le=...}`, `_sum`, `_count`).
For each window [t - w, t) we evaluate, at t, with `/api/v1/query_range` and step w:

- requests: `sum(increase(vllm:request_success_total{SEL}[w]))`
- input / output size: `sum by (le) (increase(..._bucket{SEL}[w]))`, and `_sum`

The histograms give the input and the output distributions separately, not
their joint; the window's counts are requests x P(input bucket) x P(output
bucket), i.e. independence. The Azure 2023 traces support it as a first
approximation (corr(input, output) = 0.00 code, -0.11 conv; DATA-README §1).
Our bucket edges rarely coincide with vLLM's 1-2-5 edges; the cumulative
count at our edge is interpolated linearly inside the vLLM bucket.

A timestamp where Prometheus returns no sample for the request count (target
down, not scraped yet) yields no window: missing, never 0.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np

from daemon.demand.errors import DemandInputError as SourceError
from daemon.demand.source import DemandPoll, epoch, from_epoch
from daemon.domain import BucketGrid, DemandWindow


@dataclass(frozen=True)
class PrometheusQueries:
    """PromQL templates; `{sel}` is the label selector (with braces or empty), `{w}` the window, e.g. 60s."""

    requests: str = "sum(increase(vllm:request_success_total{sel}[{w}]))"
    input_buckets: str = "sum by (le) (increase(vllm:request_prompt_tokens_bucket{sel}[{w}]))"
    output_buckets: str = "sum by (le) (increase(vllm:request_generation_tokens_bucket{sel}[{w}]))"
    input_sum: str = "sum(increase(vllm:request_prompt_tokens_sum{sel}[{w}]))"
    output_sum: str = "sum(increase(vllm:request_generation_tokens_sum{sel}[{w}]))"

    def render(self, template: str, selector: str, window_s: float) -> str:
        sel = selector.strip()
        if sel and not sel.startswith("{"):
            sel = "{" + sel + "}"
        return template.replace("{sel}", sel).replace("{w}", f"{int(round(window_s))}s")


class PrometheusClient:
    """The query half: HTTP to Prometheus, PromQL templates in, DemandWindows out."""

    def __init__(self, base_url: str, selector: str = "", queries: PrometheusQueries | None = None,
                 timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.selector = selector
        self.queries = queries or PrometheusQueries()
        self.timeout_s = timeout_s

    def _range(self, query: str, start: float, end: float, step: float) -> list[dict]:
        params = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        url = f"{self.base_url}/api/v1/query_range?{params}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            raise SourceError(f"{self.base_url}: query {query!r} failed: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise SourceError(f"{self.base_url}: query {query!r} failed: {e}") from None
        if body.get("status") != "success":
            raise SourceError(f"{self.base_url}: query {query!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    @staticmethod
    def _scalar_series(result: list[dict]) -> dict[float, float]:
        out: dict[float, float] = {}
        for s in result:
            for t, v in s.get("values", []):
                val = float(v)
                if not math.isnan(val):
                    out[round(float(t), 3)] = out.get(round(float(t), 3), 0.0) + val
        return out

    @staticmethod
    def _bucket_series(result: list[dict]) -> dict[float, list[tuple[float, float]]]:
        out: dict[float, list] = {}
        for s in result:
            le = s.get("metric", {}).get("le")
            if le is None:
                continue
            edge = math.inf if le in ("+Inf", "Inf") else float(le)
            for t, v in s.get("values", []):
                val = float(v)
                if not math.isnan(val):
                    out.setdefault(round(float(t), 3), []).append((edge, val))
        return out

    def windows(self, service: str, start: float, end: float, window_s: float, grid: BucketGrid) -> list[DemandWindow]:
        """Windows [t - window_s, t) for window ends t in (start, end], aligned to multiples of window_s."""
        first_end = math.floor(start / window_s) * window_s + window_s
        last_end = math.floor(end / window_s) * window_s
        if last_end < first_end:
            return []
        q = self.queries
        r = lambda tpl: self._range(q.render(tpl, self.selector, window_s), first_end, last_end, window_s)  # noqa: E731
        reqs = self._scalar_series(r(q.requests))
        ins = self._bucket_series(r(q.input_buckets))
        outs = self._bucket_series(r(q.output_buckets))
        in_sum = self._scalar_series(r(q.input_sum))
        out_sum = self._scalar_series(r(q.output_sum))
        wins = []
        for t in sorted(reqs):
            n = max(0.0, reqs[t])
            p_in = bucket_shares(ins.get(t, []), grid.input_edges)
            p_out = bucket_shares(outs.get(t, []), grid.output_edges)
            if n > 0 and (p_in is None or p_out is None):
                p_in = p_in if p_in is not None else _first_bucket(grid.n_input)
                p_out = p_out if p_out is not None else _first_bucket(grid.n_output)
            if n > 0:
                m = n * np.outer(p_in, p_out)
            else:
                m = np.zeros((grid.n_input, grid.n_output))
            counts = tuple(tuple(float(x) for x in row) for row in m)
            wins.append(DemandWindow(service, from_epoch(t - window_s), window_s, counts,
                                     float(in_sum.get(t, 0.0)), float(out_sum.get(t, 0.0))))
        return wins


def _first_bucket(n: int) -> np.ndarray:  # sizes unknown: the histograms had no sample
    v = np.zeros(n)
    v[0] = 1.0
    return v


def bucket_shares(cumulative: list[tuple[float, float]], edges: tuple[int, ...]) -> np.ndarray | None:
    """Shares per [edges[i], edges[i+1]) from a Prometheus cumulative histogram [(le, count)].

    Linear interpolation of the cumulative count inside a source bucket; the
    last of our buckets takes everything above its lower edge.
    """
    if not cumulative:
        return None
    pts = sorted(cumulative)
    total = pts[-1][1]
    if total <= 0:
        return None
    les = [0.0] + [le for le, _ in pts]
    cum = [0.0] + [c for _, c in pts]
    cum = list(np.maximum.accumulate(np.array(cum)))  # increase() extrapolation can jitter monotonicity

    def at(x: float) -> float:
        for k in range(1, len(les)):
            if x <= les[k]:
                lo, hi = les[k - 1], les[k]
                if math.isinf(hi):
                    return cum[k - 1]
                frac = (x - lo) / (hi - lo) if hi > lo else 1.0
                return cum[k - 1] + frac * (cum[k] - cum[k - 1])
        return cum[-1]

    # a request of exactly `le` tokens counts under le; our bucket [a, b) ends just below b
    upper = [at(e - 1) if e > 0 else 0.0 for e in edges[1:-1]]
    c = [0.0] + upper + [total]
    shares = np.diff(np.array(c)) / total
    return np.clip(shares, 0.0, None) / max(1e-12, np.clip(shares, 0.0, None).sum())


class PrometheusFeed:
    """Finished windows since the last committed one; windows Prometheus has no sample for stay absent.

    The cursor is the end of the last window read. A window [t - w, t) is read
    once `now` is past t + `lateness_s`, so the scrapes that fall inside it are
    in Prometheus (a scrape interval or two). After a long stop the feed
    resumes from its cursor, reading back at most `max_backfill_s`.
    """

    kind = "prometheus"

    def __init__(self, service: str, client: PrometheusClient, grid: BucketGrid, window_s: float,
                 lateness_s: float = 30.0, backfill_s: float = 3600.0, max_backfill_s: float = 4 * 86400.0):
        self.service, self.client, self.grid, self.window_s = service, client, grid, window_s
        self.lateness_s, self.backfill_s, self.max_backfill_s = lateness_s, backfill_s, max_backfill_s
        self._last_end: float | None = None

    def resume(self, cursor: dict | None) -> None:
        if cursor and cursor.get("url") == self.client.base_url and cursor.get("last_end") is not None:
            self._last_end = float(cursor["last_end"])

    def commit(self, poll: DemandPoll) -> None:
        self._last_end = poll.cursor["last_end"]

    def poll(self, now) -> DemandPoll:
        now_s = epoch(now)
        end = math.floor((now_s - self.lateness_s) / self.window_s) * self.window_s
        start = self._last_end if self._last_end is not None else end - self.backfill_s
        problems = []
        if end - start > self.max_backfill_s:
            problems.append(f"{self.client.base_url}: {end - start:.0f} s since the last window read; reading "
                            f"back only {self.max_backfill_s:.0f} s")
            start = end - self.max_backfill_s
        cursor = {"url": self.client.base_url, "last_end": max(end, start)}
        if end <= start:
            return DemandPoll(self.service, (), cursor)
        wins = self.client.windows(self.service, start, end, self.window_s, self.grid)
        return DemandPoll(self.service, tuple(wins), cursor, tuple(problems))
