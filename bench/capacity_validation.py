"""Validation figures for the capacity estimator.

    python bench/capacity_validation.py              # Vidur error table + Mélange tokens/$ + defaults
    python bench/capacity_validation.py --calibrate  # also re-fit the efficiency factors on Vidur

Reads ../shared/data/vidur (the repository's sibling `shared` folder).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

PRICES = {"A10G": 1.01, "A100-80GB": 3.67}  # $/h, Mélange paper (AWS g5.xlarge; A100-80GB), BACKGROUND §1
MELANGE_SIZES = (25, 50, 100, 250, 500, 1000, 2000)  # request sizes (input = output tokens) along Mélange's axis


def vidur_section(calibrate: bool) -> None:
    from daemon.capacity.calibrate import error_table, fit_efficiency, load_vidur, rel_errors
    from daemon.capacity.hardware import gpu_spec

    root = DATA / "vidur"
    if not root.is_dir():
        print(f"(no Vidur data at {root}; skipped)")
        return
    points = load_vidur(root)
    print("== Vidur: layer linear ops (attn_pre_proj+attn_post_proj+mlp_up_proj+mlp_down_proj), estimate vs measured")
    print(f"{len(points)} measured points, num_tokens 1..4096\n")
    print(f"{'gpu':10} {'model':16} {'tp':>2}  " + "  ".join(f"{b:>10}" for b in
          ("1-16", "17-128", "129-512", "513-1024", "1025-2048", "2049-4096")) + "   (mean |err| / max |err| %)")
    rows = error_table(points)
    keys = sorted({(r["gpu"], r["model"], r["tp"]) for r in rows}, key=lambda k: (k[2], k[0], k[1]))
    for k in keys:
        cells = [r for r in rows if (r["gpu"], r["model"], r["tp"]) == k]
        txt = "  ".join(f"{r['mean_abs'] * 100:4.1f}/{r['max_abs'] * 100:4.1f}" for r in cells)
        print(f"{k[0]:10} {k[1]:16} {k[2]:>2}  {txt}")
    print("\nsummary per GPU and TP (|relative error|): max / p95 / mean, and share of points within 25%")
    for gpu in ("A100-80GB", "A40", "H100"):
        for tp in (1, 2, 4, 8):
            sel = [p for p in points if p.gpu == gpu and p.tp == tp]
            if not sel:
                continue
            errs = sorted(abs(e) for e in rel_errors(sel))
            p95 = errs[int(0.95 * (len(errs) - 1))]
            within = sum(e <= 0.25 for e in errs) / len(errs)
            print(f"  {gpu:10} tp={tp}: max {errs[-1] * 100:5.1f}%  p95 {p95 * 100:5.1f}%  "
                  f"mean {sum(errs) / len(errs) * 100:4.1f}%  within25 {within * 100:5.1f}%  (n={len(errs)})")
    if calibrate:
        print("\nre-fit on TP=1 (least squares on log error): fitted vs built-in")
        for gpu in ("A100-80GB", "A40", "H100"):
            eff = fit_efficiency([p for p in points if p.tp == 1], gpu)
            cur = gpu_spec(gpu).efficiency
            print(f"  {gpu:10} fitted bw={eff.bw} compute={eff.compute} kernel={eff.kernel_s * 1e6:.1f}us   "
                  f"built-in bw={cur.bw} compute={cur.compute} kernel={cur.kernel_s * 1e6:.1f}us")


def melange_section() -> None:
    from daemon.capacity.estimator import estimate_profile, make_replica, max_rps

    print("\n== Mélange check: Llama-2-7B, A10G $1.01/h vs A100-80GB $3.67/h, tokens per dollar (T/$)")
    print("request size s = input = output tokens; T/$ = MaxTput x 2s tokens x 3600 / price; TTFT SLO 2 s")
    for engine in ("vllm-v0", "vllm-v1"):
        for tpot in (120.0, 40.0):
            print(f"\n  engine {engine}, TPOT {tpot:g} ms")
            print(f"  {'size':>6} {'A10G rps':>9} {'A100 rps':>9} {'A10G T/$':>10} {'A100 T/$':>10} {'A10G/A100':>9}  winner")
            for s in MELANGE_SIZES:
                tpd = {}
                rps = {}
                for gpu in ("A10G", "A100-80GB"):
                    rep = make_replica("Llama-2-7B", gpu, 1, "bf16", engine)
                    rps[gpu], _ = max_rps(rep, (s, s), (s, s), 2.0, tpot)
                    tpd[gpu] = rps[gpu] * 2 * s * 3600 / PRICES[gpu]
                ratio = tpd["A10G"] / tpd["A100-80GB"] if tpd["A100-80GB"] else float("inf")
                win = "A10G" if ratio > 1 else "A100-80GB"
                print(f"  {s:>6} {rps['A10G']:>9.2f} {rps['A100-80GB']:>9.2f} {tpd['A10G']:>10.0f} "
                      f"{tpd['A100-80GB']:>10.0f} {ratio:>9.2f}  {win}")
    print("\n  default bucket grid (rows input 0-256..4096-16384, cols output 0-64..1024-4096), A10G/A100 T/$ ratio")
    for engine in ("vllm-v0", "vllm-v1"):
        for tpot in (120.0, 40.0):
            a = estimate_profile("Llama-2-7B", "A10G", 1, ttft_s=2.0, tpot_ms=tpot, engine=engine, curves=False)
            b = estimate_profile("Llama-2-7B", "A100-80GB", 1, ttft_s=2.0, tpot_ms=tpot, engine=engine, curves=False)
            ratios = [(x.max_rps / 1.01) / (y.max_rps / 3.67) if y.max_rps else 0.0 for x, y in zip(a.cells, b.cells)]
            rows = [" ".join(f"{r:5.2f}" for r in ratios[i * 4:(i + 1) * 4]) for i in range(4)]
            print(f"  {engine} TPOT {tpot:>3g}: " + " | ".join(rows))


def defaults_section() -> None:
    from daemon.capacity.estimator import estimate_profile

    print("\n== Regenerated defaults: Llama-2-7B bf16, TTFT 2 s, TPOT 120 ms, engine vllm-v1, default grid")
    for gpu in ("A10G", "L4", "A100-80GB", "H100"):
        p = estimate_profile("meta-llama/Llama-2-7b-hf", gpu, 1, ttft_s=2.0, tpot_ms=120.0, curves=False)
        rows = [[round(c.max_rps, 2) for c in p.cells[i * 4:(i + 1) * 4]] for i in range(4)]
        print(f"  {gpu:10} {rows}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calibrate", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    vidur_section(args.calibrate)
    melange_section()
    defaults_section()
    print(f"\n({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
