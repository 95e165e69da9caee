"""Accelerator specs the capacity estimator reasons with.

Peak figures are the vendor's dense (non-sparse) tensor throughput for FP16/BF16,
device memory and its bandwidth, and the link tensor-parallel all-reduces travel on.
Efficiency factors say how much of the peak the GEMMs of an LLM layer actually get:
they were fitted on Vidur's measured per-operator timings (see `calibrate.py` and
`bench/capacity_validation.py --calibrate`) where such data exists (A100, A40, H100),
and otherwise borrowed from the nearest measured architecture, which is an
assumption and says so in `efficiency_source`.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
TFLOPS = 1e12


@dataclass(frozen=True)
class Efficiency:
    """Achieved fraction of peak, fitted on measured per-layer GEMM times.

    The linear-operator model is, per GEMM of m tokens x (k -> n):
        t = (t_mem^p + t_cmp^p)^(1/p) + kernel_s
        t_mem = bytes / (bandwidth * bw),   t_cmp = 2 * m' * k * n / (peak * compute)
    a soft maximum of the two rooflines (p = 4). m' pads the token dimension to
    the GEMM tile above `small_m` tokens (cuBLAS tiles of 128 rows: 96 tokens cost
    as much as 128 and 192 as much as 256, which Vidur's A100 data shows plainly);
    at or below `small_m` skinny GEMV-like kernels are used and nothing is padded.
    """

    bw: float
    compute: float
    kernel_s: float
    tile: int = 128
    small_m: int = 64
    softmax_p: float = 4.0


# Fitted by `python bench/capacity_validation.py --calibrate` on Vidur's mlp.csv
# (microsoft/vidur data/profiling/compute, TP=1, num_tokens 1..4096, all models of that GPU):
# least squares on log(predicted / measured) of attn_pre_proj+attn_post_proj+mlp_up_proj+mlp_down_proj.
EFF_A100 = Efficiency(bw=0.768, compute=0.728, kernel_s=5.7e-6)
EFF_A40 = Efficiency(bw=0.826, compute=0.772, kernel_s=36.3e-6)
EFF_H100 = Efficiency(bw=0.937, compute=0.708, kernel_s=11.2e-6)
# No measurement: Ampere/Ada GDDR parts borrow A40 (same GA102-class memory system) but with a
# kernel overhead nearer the A100's; HBM Ampere borrows A100; Hopper borrows H100; Volta/Turing
# borrow A100 with lower compute efficiency (older tensor cores, fewer tuned kernels); non-NVIDIA
# parts get a lower, round assumption because their kernels are less tuned for vLLM-like serving.
EFF_GDDR_AMPERE = Efficiency(bw=0.83, compute=0.77, kernel_s=10e-6)
EFF_OLDER = Efficiency(bw=0.80, compute=0.60, kernel_s=10e-6)
EFF_OTHER_VENDOR = Efficiency(bw=0.70, compute=0.50, kernel_s=15e-6)


@dataclass(frozen=True)
class GpuSpec:
    name: str
    fp16_tflops: float  # dense FP16/BF16 tensor TFLOPS
    memory_gb: float
    bandwidth_gbs: float
    link_gbs: float  # per-direction GPU-GPU bandwidth for tensor-parallel all-reduce
    efficiency: Efficiency
    source: str
    efficiency_source: str
    fp8_tflops: float | None = None  # dense FP8 tensor TFLOPS; None = no FP8 tensor cores
    int8_tops: float | None = None  # dense INT8 tensor TOPS; None = no INT8 tensor cores
    vendor: str = "nvidia"

    def peak_flops(self, dtype: str) -> float:
        """Peak for the GEMMs of a model stored in `dtype`.

        fp8/int8 weights run W8A8 at the 8-bit rate where the chip has it, and
        weight-only (dequantized to fp16 in the kernel) where it does not.
        """
        if dtype == "fp8" and self.fp8_tflops:
            return self.fp8_tflops * TFLOPS
        if dtype == "int8" and self.int8_tops:
            return self.int8_tops * TFLOPS
        return self.fp16_tflops * TFLOPS


_MEASURED = "fitted on Vidur measured timings (bench/capacity_validation.py --calibrate)"

GPUS: dict[str, GpuSpec] = {
    # --- cloud GPUs -------------------------------------------------------------------------
    "T4": GpuSpec(  # NVIDIA T4 datasheet: 65 FP16 tensor TFLOPS (mixed), 130 INT8 TOPS, 16 GB, 320 GB/s; PCIe Gen3 x16
        "T4", 65, 16, 320, 16, EFF_OLDER, "NVIDIA T4 datasheet", "assumed (no measurement): older-arch factors",
        int8_tops=130),
    "L4": GpuSpec(  # NVIDIA L4 datasheet: 121 FP16 / 242 FP8 dense TFLOPS, 24 GB, 300 GB/s; PCIe Gen4 x16 (32 GB/s/dir)
        "L4", 121, 24, 300, 32, EFF_GDDR_AMPERE, "NVIDIA L4 datasheet", "assumed: A40-like GDDR factors",
        fp8_tflops=242, int8_tops=242),
    "A10G": GpuSpec(  # AWS G5 / Baseten "NVIDIA A10 vs A10G for ML model inference": 24 GB GDDR6, 600 GB/s, ~70 FP16 tensor TFLOPS
        "A10G", 70, 24, 600, 32, EFF_GDDR_AMPERE, "AWS EC2 G5 page; Baseten blog 'A10 vs A10G' (tensor TFLOPS)",
        "assumed: A40-like GDDR factors", int8_tops=140),
    "A10": GpuSpec(  # NVIDIA A10 datasheet / BACKGROUND §4: 125 FP16 tensor TFLOPS, 24 GB, 600 GB/s; PCIe Gen4
        "A10", 125, 24, 600, 32, EFF_GDDR_AMPERE, "NVIDIA A10 datasheet; BACKGROUND §4", "assumed: A40-like GDDR factors",
        int8_tops=250),
    "A40": GpuSpec(  # NVIDIA A40 datasheet: 149.7 FP16 tensor TFLOPS, 48 GB, 696 GB/s; NVLink bridge 112.5 GB/s bidirectional
        "A40", 149.7, 48, 696, 56, EFF_A40, "NVIDIA A40 datasheet", _MEASURED, int8_tops=299.3),
    "L40S": GpuSpec(  # NVIDIA L40S datasheet: 362 FP16 / 733 FP8 dense TFLOPS, 48 GB, 864 GB/s; PCIe Gen4
        "L40S", 362, 48, 864, 32, EFF_GDDR_AMPERE, "NVIDIA L40S datasheet", "assumed: A40-like GDDR factors",
        fp8_tflops=733, int8_tops=733),
    "A100-40GB": GpuSpec(  # NVIDIA A100 datasheet: 312 FP16 TFLOPS, 40 GB HBM2, 1555 GB/s; NVLink 600 GB/s bidirectional
        "A100-40GB", 312, 40, 1555, 300, EFF_A100, "NVIDIA A100 datasheet (SXM4 40GB)", "A100-80GB fit (same chip)",
        int8_tops=624),
    "A100-80GB": GpuSpec(  # NVIDIA A100 datasheet: 312 FP16 TFLOPS, 80 GB HBM2e, 2039 GB/s; NVLink 600 GB/s bidirectional
        "A100-80GB", 312, 80, 2039, 300, EFF_A100, "NVIDIA A100 datasheet (SXM4 80GB)", _MEASURED, int8_tops=624),
    "H100": GpuSpec(  # NVIDIA H100 SXM datasheet: 989 BF16 / 1979 FP8 dense TFLOPS, 80 GB HBM3, 3350 GB/s; NVLink 900 GB/s
        "H100", 989, 80, 3350, 450, EFF_H100, "NVIDIA H100 datasheet (SXM5)", _MEASURED,
        fp8_tflops=1979, int8_tops=1979),
    "H200": GpuSpec(  # NVIDIA H200 datasheet: 989 BF16 / 1979 FP8 dense TFLOPS, 141 GB HBM3e, 4800 GB/s; NVLink 900 GB/s
        "H200", 989, 141, 4800, 450, EFF_H100, "NVIDIA H200 datasheet (SXM)", "H100 fit (same Hopper core)",
        fp8_tflops=1979, int8_tops=1979),
    "V100": GpuSpec(  # BACKGROUND §4 / NVIDIA V100 datasheet: 125 tensor TFLOPS, 32 GB, 900 GB/s; NVLink 300 GB/s bidirectional
        "V100", 125, 32, 900, 150, EFF_OLDER, "NVIDIA V100 datasheet (SXM2 32GB); BACKGROUND §4",
        "assumed (no measurement): older-arch factors"),
    # --- chips named in seed 001 (BACKGROUND §4), dense FP16 TFLOPS / GB / GB/s from there ---
    "H800": GpuSpec(  # BACKGROUND §4: 989/80/3350; NVLink cut to 400 GB/s bidirectional (export variant)
        "H800", 989, 80, 3350, 200, EFF_H100, "BACKGROUND §4 (seed 001)", "H100 fit (same Hopper core)",
        fp8_tflops=1979, int8_tops=1979),
    "A800": GpuSpec(  # BACKGROUND §4: 312/80/2039; NVLink cut to 400 GB/s bidirectional (export variant)
        "A800", 312, 80, 2039, 200, EFF_A100, "BACKGROUND §4 (seed 001)", "A100 fit (same Ampere core)", int8_tops=624),
    "H20": GpuSpec(  # BACKGROUND §4: 148/96/4000; Hopper with NVLink 900 GB/s bidirectional; FP8 296 dense
        "H20", 148, 96, 4000, 450, EFF_H100, "BACKGROUND §4 (seed 001)", "H100 fit (same Hopper core)",
        fp8_tflops=296, int8_tops=296),
    "L20": GpuSpec(  # BACKGROUND §4: 119.5/48/864; Ada, PCIe Gen4
        "L20", 119.5, 48, 864, 32, EFF_GDDR_AMPERE, "BACKGROUND §4 (seed 001)", "assumed: A40-like GDDR factors",
        fp8_tflops=239, int8_tops=239),
    "A30": GpuSpec(  # BACKGROUND §4: 165/24/933; NVLink bridge 200 GB/s bidirectional
        "A30", 165, 24, 933, 100, EFF_A100, "BACKGROUND §4 (seed 001)", "A100 fit (HBM Ampere)", int8_tops=330),
    "Ascend-910B": GpuSpec(  # BACKGROUND §4: 376/64/~1600; HCCS between NPUs (~56 GB/s per link x7, taken as 196 GB/s/dir)
        "Ascend-910B", 376, 64, 1600, 196, EFF_OTHER_VENDOR, "BACKGROUND §4 (seed 001)",
        "assumed (no measurement): other-vendor factors", int8_tops=752, vendor="huawei"),
    "Enflame-S60": GpuSpec(  # BACKGROUND §4 (邃思2.0): 160/64/~1800; link not stated there, PCIe Gen5 x16 assumed
        "Enflame-S60", 160, 64, 1800, 64, EFF_OTHER_VENDOR, "BACKGROUND §4 (seed 001)",
        "assumed (no measurement): other-vendor factors", vendor="enflame"),
    "Kunlun-XPU2": GpuSpec(  # BACKGROUND §4: 128/32/512; link not stated there, PCIe Gen4 x16 assumed
        "Kunlun-XPU2", 128, 32, 512, 32, EFF_OTHER_VENDOR, "BACKGROUND §4 (seed 001)",
        "assumed (no measurement): other-vendor factors", vendor="kunlunxin"),
}

# Names operators and catalogs use for the same chips (SkyPilot's catalog says "A100-80GB",
# "H100", "L4"; Chinese clouds write "910B", "S60", "XPU2").
_ALIASES = {
    "A100": "A100-40GB", "A100-40G": "A100-40GB", "A100-80G": "A100-80GB", "A100_80GB": "A100-80GB",
    "H100-80GB": "H100", "H100-SXM": "H100", "H200-141GB": "H200", "L40": "L40S",
    "910B": "Ascend-910B", "ASCEND910B": "Ascend-910B", "ASCEND-910B": "Ascend-910B",
    "S60": "Enflame-S60", "ENFLAME-S60": "Enflame-S60", "XPU2": "Kunlun-XPU2", "KUNLUN-XPU2": "Kunlun-XPU2",
}


def canonical_gpu(name: str) -> str | None:
    """The built-in spec name for `name` (case-insensitive, common aliases), or None."""
    if name in GPUS:
        return name
    upper = name.strip().upper()
    for key in GPUS:
        if key.upper() == upper:
            return key
    return _ALIASES.get(upper)


def gpu_spec(name: str) -> GpuSpec:
    key = canonical_gpu(name)
    if key is None:
        raise KeyError(f"unknown GPU type {name!r}; known: {', '.join(sorted(GPUS))}")
    return GPUS[key]
