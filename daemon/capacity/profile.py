"""Capacity profiles: MaxTput per size cell of one (model, GPU, replica shape, dtype) under an SLO.

A profile is a JSON file. Each cell holds the highest request rate one replica
sustained (or is estimated to sustain) for requests of that size while meeting
the SLO, and, where known, the latency curve behind it (offered rate -> p99 TTFT
and TPOT). Keeping the curve is what lets one measurement answer for another SLO:
`Profile.at_slo` re-reads the curve instead of trusting the stored max_rps.

Cells are token ranges [lo, hi]; a point measurement (AIBrix: input 128 tokens)
is the degenerate range [128, 128]. `to_grid` maps a profile onto a service's
`BucketGrid` by log-log interpolation between cell centres, never extrapolating
upwards (a bucket of larger requests than any profiled is "uncovered", not guessed).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.domain import BucketGrid

SCHEMA_VERSION = 1
ACHIEVED_FRACTION = 0.9  # a rate counts as sustained if >= 90% of it completed (AIBrix's rule)


class ProfileError(Exception):
    """A profile file that cannot be used; the message names the file and field."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Slo(_M):
    ttft_p99_s: float | None = Field(default=None, gt=0)
    tpot_p99_ms: float | None = Field(default=None, gt=0)
    e2e_p99_s: float | None = Field(default=None, gt=0)  # AIBrix profiles state an E2E SLO only

    def at_least_as_strict_as(self, ttft_s: float, tpot_ms: float) -> bool:
        """True if a rate that met this SLO also meets (ttft_s, tpot_ms)."""
        return (
            self.ttft_p99_s is not None
            and self.tpot_p99_ms is not None
            and self.ttft_p99_s <= ttft_s + 1e-9
            and self.tpot_p99_ms <= tpot_ms + 1e-9
        )

    def label(self) -> str:
        parts = []
        if self.ttft_p99_s is not None:
            parts.append(f"TTFT p99 {self.ttft_p99_s:g}s")
        if self.tpot_p99_ms is not None:
            parts.append(f"TPOT p99 {self.tpot_p99_ms:g}ms")
        if self.e2e_p99_s is not None:
            parts.append(f"E2E p99 {self.e2e_p99_s:g}s")
        return ", ".join(parts) or "none"


class CurvePoint(_M):
    rate_rps: float = Field(ge=0)  # offered rate (inf is not a rate: closed-loop runs are skipped)
    achieved_rps: float | None = Field(default=None, ge=0)
    ttft_p99_s: float | None = Field(default=None, ge=0)
    tpot_p99_ms: float | None = Field(default=None, ge=0)
    ttft_mean_s: float | None = Field(default=None, ge=0)
    tpot_mean_ms: float | None = Field(default=None, ge=0)
    e2e_p99_s: float | None = Field(default=None, ge=0)
    requests: int | None = Field(default=None, ge=0)
    errors: int | None = Field(default=None, ge=0)
    batch: float | None = Field(default=None, ge=0)  # estimator only: mean decode batch

    def meets(self, ttft_s: float, tpot_ms: float) -> bool:
        if self.ttft_p99_s is None or self.tpot_p99_ms is None:
            return False
        if self.errors:
            return False
        if self.achieved_rps is not None and self.achieved_rps < ACHIEVED_FRACTION * self.rate_rps:
            return False
        return self.ttft_p99_s <= ttft_s and self.tpot_p99_ms <= tpot_ms


class Cell(_M):
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    max_rps: float = Field(ge=0)
    curve: list[CurvePoint] = []

    @model_validator(mode="after")
    def _ranges(self) -> "Cell":
        for name, (lo, hi) in (("input_tokens", self.input_tokens), ("output_tokens", self.output_tokens)):
            if lo < 0 or hi < lo:
                raise ValueError(f"{name} must be [lo, hi] with 0 <= lo <= hi, got [{lo}, {hi}]")
        return self

    @property
    def center(self) -> tuple[float, float]:
        return (self.input_tokens[0] + self.input_tokens[1]) / 2, (self.output_tokens[0] + self.output_tokens[1]) / 2

    def max_rps_at(self, ttft_s: float, tpot_ms: float) -> float | None:
        """Highest sustained rate of the curve before the SLO first breaks; None without a curve."""
        pts = [p for p in self.curve if p.ttft_p99_s is not None and p.tpot_p99_ms is not None]
        if not pts:
            return None
        best = 0.0
        for p in sorted(pts, key=lambda p: p.rate_rps):
            if not p.meets(ttft_s, tpot_ms):
                break
            best = max(best, p.achieved_rps if p.achieved_rps is not None else p.rate_rps)
        return best


class Provenance(_M):
    kind: Literal["measured", "imported", "estimated"]
    source: str
    created: datetime
    tool: str | None = None
    notes: str | None = None


class Profile(_M):
    schema_version: int = SCHEMA_VERSION
    model: str
    gpu: str
    tp: int = Field(default=1, ge=1)  # GPUs per replica (tensor-parallel degree)
    dtype: Literal["bf16", "fp16", "fp8", "int8"] = "bf16"
    slo: Slo
    provenance: Provenance
    engine: str | None = None
    cells: list[Cell] = Field(min_length=1)

    @property
    def pool(self) -> str:
        return f"{self.gpu}x{self.tp}"

    @property
    def key(self) -> str:
        """File stem: one profile per (model, gpu, tp, dtype, kind, slo)."""
        slug = self.model.split("/")[-1]
        s = self.slo
        slo = f"ttft{s.ttft_p99_s:g}-tpot{s.tpot_p99_ms:g}" if s.ttft_p99_s and s.tpot_p99_ms else "slo-other"
        raw = f"{slug}__{self.gpu}x{self.tp}__{self.dtype}__{self.provenance.kind}__{slo}"
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)

    def has_curves(self) -> bool:
        return any(c.curve for c in self.cells)

    def at_slo(self, ttft_s: float, tpot_ms: float) -> "Profile | None":
        """This profile re-read at another SLO, or None if it cannot answer for it.

        With curves the max rate is re-derived per cell; without, the stored
        max_rps is valid only if the profile's own SLO is at least as strict.
        """
        stricter = self.slo.at_least_as_strict_as(ttft_s, tpot_ms)
        if self.has_curves():
            cells = []
            for c in self.cells:
                v = c.max_rps_at(ttft_s, tpot_ms)
                if v is None:  # a cell without a curve keeps its value only if its SLO vouches for ours
                    v = c.max_rps if stricter else 0.0
                cells.append(c.model_copy(update={"max_rps": v}))
            return self.model_copy(update={"cells": cells, "slo": Slo(ttft_p99_s=ttft_s, tpot_p99_ms=tpot_ms)})
        if stricter:
            return self
        return None

    def to_grid(self, grid: BucketGrid) -> tuple[list[list[float | None]], int]:
        """MaxTput over `grid` (rows input, cols output); None where the profile does not cover.

        Returns the matrix and the number of uncovered cells.
        """
        interp = _GridInterpolator(self.cells)
        out: list[list[float | None]] = []
        missing = 0
        for i in range(grid.n_input):
            row: list[float | None] = []
            for j in range(grid.n_output):
                x = (grid.input_edges[i] + grid.input_edges[i + 1]) / 2
                y = (grid.output_edges[j] + grid.output_edges[j + 1]) / 2
                v = interp(x, y)
                missing += v is None
                row.append(v)
            out.append(row)
        return out, missing


class _GridInterpolator:
    """Log-log bilinear interpolation of max_rps over cell centres on a rectilinear lattice.

    Below the smallest profiled size a query is clamped to it (smaller requests
    are never slower, so this is conservative); above the largest it is uncovered.
    If the centres do not form a full lattice, the nearest centre that is at
    least as large in both sizes answers (again conservative).
    """

    def __init__(self, cells: list[Cell]):
        self.values: dict[tuple[float, float], float] = {}
        for c in cells:
            k = c.center
            self.values[k] = min(self.values.get(k, math.inf), c.max_rps)
        self.xs = sorted({k[0] for k in self.values})
        self.ys = sorted({k[1] for k in self.values})
        self.full = all((x, y) in self.values for x in self.xs for y in self.ys)

    @staticmethod
    def _bracket(axis: list[float], v: float) -> tuple[float, float, float] | None:
        if v <= axis[0]:
            return axis[0], axis[0], 0.0
        if v > axis[-1]:
            return None
        for a, b in zip(axis, axis[1:]):
            if a <= v <= b:
                if b == a:
                    return a, b, 0.0
                la, lb = math.log(max(a, 1.0)), math.log(max(b, 1.0))
                w = 0.0 if lb == la else (math.log(max(v, 1.0)) - la) / (lb - la)
                return a, b, min(max(w, 0.0), 1.0)
        return None

    def __call__(self, x: float, y: float) -> float | None:
        if not self.full:
            cands = [k for k in self.values if k[0] >= x and k[1] >= y]
            if not cands:
                return None

            def dist(k: tuple[float, float]) -> float:
                return math.log(max(k[0], 1.0) / max(x, 1.0)) + math.log(max(k[1], 1.0) / max(y, 1.0))

            return self.values[min(cands, key=dist)]
        bx = self._bracket(self.xs, x)
        by = self._bracket(self.ys, y)
        if bx is None or by is None:
            return None
        (x0, x1, wx), (y0, y1, wy) = bx, by
        corners = [self.values[(x0, y0)], self.values[(x1, y0)], self.values[(x0, y1)], self.values[(x1, y1)]]
        if min(corners) <= 0:
            # Interpolating towards an unservable corner: take the conservative corner value.
            return 0.0 if wx > 0 or wy > 0 or corners[0] <= 0 else corners[0]
        lv = [math.log(v) for v in corners]
        top = lv[0] * (1 - wx) + lv[1] * wx
        bot = lv[2] * (1 - wx) + lv[3] * wx
        return math.exp(top * (1 - wy) + bot * wy)


# ---- files ------------------------------------------------------------------------------


def load_profile(path: str | Path) -> Profile:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProfileError(f"{p}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ProfileError(f"{p}: not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        lines = [f"{p}: invalid capacity profile"]
        for e in err.errors():
            loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in e["loc"]).lstrip(".")
            lines.append(f"  {loc or '<top level>'}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}")
        raise ProfileError("\n".join(lines)) from None


def save_profile(profile: Profile, directory: str | Path, name: str | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name or profile.key}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(profile.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_profiles(directory: str | Path) -> tuple[list[tuple[Path, Profile]], list[str]]:
    """Every readable profile under `directory` and one error line per unreadable file."""
    d = Path(directory)
    if not d.is_dir():
        return [], []
    found: list[tuple[Path, Profile]] = []
    errors: list[str] = []
    for f in sorted(d.glob("*.json")):
        try:
            found.append((f, load_profile(f)))
        except ProfileError as e:
            errors.append(str(e))
    return found, errors


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)
