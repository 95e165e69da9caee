"""Check and fit the GEMM efficiency factors against Vidur's measured operator timings.

Vidur (MLSys'24, github.com/microsoft/vidur, MIT) profiled each operator of a
transformer layer on real A100-80GB, A40 and H100 GPUs; its mlp.csv rows give the
median milliseconds of attn_pre_proj, attn_post_proj, mlp_up_proj and mlp_down_proj
for one layer at a batch of num_tokens tokens and a tensor-parallel degree. The
estimator's `layer_linear_time` is compared against their sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from daemon.capacity.estimator import layer_linear_time
from daemon.capacity.hardware import Efficiency, GpuSpec, gpu_spec
from daemon.capacity.models import ModelArch

LINEAR_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
VIDUR_GPUS = {"a100": "A100-80GB", "a40": "A40", "h100": "H100"}


@dataclass(frozen=True)
class VidurPoint:
    gpu: str  # our GPU name
    model: str  # Vidur's model directory name
    arch: ModelArch
    num_tokens: int
    tp: int
    measured_s: float


def _arch_from_row(model: str, row) -> ModelArch:
    return ModelArch(name=model, layers=1, hidden=int(row["n_embd"]), heads=int(row["n_head"]),
                     kv_heads=int(row["n_kv_head"]), ffn=int(row["n_expanded_embd"]), vocab=int(row["vocab_size"]),
                     gated_mlp=bool(row["use_gated_mlp"]), source=f"vidur mlp.csv ({model})")


def load_vidur(root: Path, max_tokens: int = 4096) -> list[VidurPoint]:
    """Every (gpu, model, num_tokens <= max_tokens, tp) row under root/compute/<gpu>/<org>/<model>/mlp.csv.xz."""
    import pandas as pd

    points: list[VidurPoint] = []
    for path in sorted(root.glob("compute/*/*/*/mlp.csv.xz")):
        gpu = VIDUR_GPUS.get(path.parts[-4])
        if gpu is None:
            continue
        model = path.parts[-2]
        df = pd.read_csv(path)
        missing = [f"time_stats.{op}.median" for op in LINEAR_OPS if f"time_stats.{op}.median" not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        df = df[df["num_tokens"] <= max_tokens]
        arch = _arch_from_row(model, df.iloc[0])
        total = sum(df[f"time_stats.{op}.median"] for op in LINEAR_OPS)
        for n, tp, ms in zip(df["num_tokens"], df["num_tensor_parallel_workers"], total):
            points.append(VidurPoint(gpu, model, arch, int(n), int(tp), float(ms) / 1e3))
    return points


def predicted(p: VidurPoint, spec: GpuSpec | None = None) -> float:
    return layer_linear_time(p.arch, spec or gpu_spec(p.gpu), p.num_tokens, p.tp, "bf16")


def rel_errors(points: list[VidurPoint], spec_for=None) -> list[float]:
    """(predicted - measured) / measured per point."""
    return [predicted(p, spec_for(p.gpu) if spec_for else None) / p.measured_s - 1.0 for p in points]


TOKEN_BANDS = ((1, 16), (17, 128), (129, 512), (513, 1024), (1025, 2048), (2049, 4096))


def error_table(points: list[VidurPoint]) -> list[dict]:
    """Rows of (gpu, model, tp, num_tokens band) -> mean and max |relative error|, signed mean."""
    rows = []
    keys = sorted({(p.gpu, p.model, p.tp) for p in points})
    for gpu, model, tp in keys:
        sel = [p for p in points if (p.gpu, p.model, p.tp) == (gpu, model, tp)]
        for lo, hi in TOKEN_BANDS:
            band = [p for p in sel if lo <= p.num_tokens <= hi]
            if not band:
                continue
            errs = rel_errors(band)
            rows.append({"gpu": gpu, "model": model, "tp": tp, "tokens": f"{lo}-{hi}", "n": len(band),
                         "mean_abs": sum(abs(e) for e in errs) / len(errs), "max_abs": max(abs(e) for e in errs),
                         "bias": sum(errs) / len(errs)})
    return rows


def fit_efficiency(points: list[VidurPoint], gpu: str) -> Efficiency:
    """Least squares on log(predicted/measured) over (bw, compute, kernel_s) for one GPU."""
    from scipy.optimize import minimize

    base = gpu_spec(gpu)
    sel = [p for p in points if p.gpu == gpu]

    def loss(x) -> float:
        bw, cmp, kern_us = x
        if not (0.05 < bw < 1.2 and 0.05 < cmp < 1.2 and 0 <= kern_us < 200):
            return 1e9
        spec = replace(base, efficiency=replace(base.efficiency, bw=bw, compute=cmp, kernel_s=kern_us * 1e-6))
        return sum(math.log(predicted(p, spec) / p.measured_s) ** 2 for p in sel) / len(sel)

    res = minimize(loss, [0.8, 0.7, 8.0], method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    bw, cmp, kern_us = res.x
    return replace(base.efficiency, bw=round(float(bw), 3), compute=round(float(cmp), 3),
                   kernel_s=round(float(kern_us), 1) * 1e-6)
