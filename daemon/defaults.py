"""Built-in capacity tables used when no profile or config says otherwise.

Placeholder MaxTput (req/s per replica) for Llama-2-7B in fp16 at TPOT p99 120 ms
and TTFT p99 2 s, over the default bucket grid (input edges 0/256/1024/4096/16384,
output edges 0/64/256/1024/4096). Computed with a roofline estimate: decode step
= (weights + batch x context x KV bytes) / (0.75 x memory bandwidth) + batch x 2P /
(0.5 x peak FLOPs), prefill = 2P x input / (0.5 x peak FLOPs), KV cache limited to
90% of memory. Chip figures from NVIDIA datasheets (A10G 24 GB 600 GB/s 125 TFLOPS;
L4 24 GB 300 GB/s 121 TFLOPS; A100-80GB 2039 GB/s 312 TFLOPS; H100 SXM 3350 GB/s
989 TFLOPS). The capacity-profiles work replaces these with measured, imported
or calibrated estimates; they are inputs, not results.
"""

_SRC = "builtin-roofline-llama2-7b (daemon/defaults.py)"
_MODEL = "meta-llama/Llama-2-7b-hf"

DEFAULT_CAPACITY: list[dict] = [
    {"model": _MODEL, "gpu": "A10G", "gpu_count": 1, "source": _SRC, "tputs": [
        [33.74, 9.22, 1.1, 0.08], [5.84, 2.61, 0.59, 0.07], [1.51, 0.75, 0.22, 0.03], [0.0, 0.0, 0.0, 0.0]]},
    {"model": _MODEL, "gpu": "L4", "gpu_count": 1, "source": _SRC, "tputs": [
        [20.35, 5.21, 0.59, 0.04], [4.16, 1.54, 0.31, 0.04], [1.12, 0.45, 0.12, 0.02], [0.0, 0.0, 0.0, 0.0]]},
    {"model": _MODEL, "gpu": "A100-80GB", "gpu_count": 1, "source": _SRC, "tputs": [
        [102.83, 40.96, 7.73, 0.77], [18.46, 11.49, 3.78, 0.58], [4.81, 3.3, 1.37, 0.31], [1.22, 0.86, 0.38, 0.11]]},
    {"model": _MODEL, "gpu": "H100", "gpu_count": 1, "source": _SRC, "tputs": [
        [286.77, 100.03, 15.59, 1.36], [52.1, 27.19, 7.4, 1.02], [13.56, 7.74, 2.63, 0.55], [3.42, 2.0, 0.73, 0.19]]},
]
