"""Transformer shapes of common open models, from each model's published config.json.

Only what the estimator needs: layer count, hidden size, attention heads and KV
heads (grouped-query attention shrinks the KV cache), MLP width, vocabulary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelArch:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int  # width of one MLP branch (intermediate_size)
    vocab: int
    gated_mlp: bool
    source: str
    max_context: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def qkv_out(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    @property
    def params(self) -> float:
        """Parameter count: embeddings + untied LM head + per-layer projections (norms ignored)."""
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.ffn
        per_layer = self.hidden * self.qkv_out + self.hidden * self.hidden + mlp
        return 2.0 * self.vocab * self.hidden + self.layers * per_layer

    def kv_bytes_per_token(self, kv_bytes: float = 2.0) -> float:
        """K and V of one token over all layers (fp16 cache unless told otherwise)."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * kv_bytes


MODELS: dict[str, ModelArch] = {
    m.name: m
    for m in [
        # huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
        ModelArch("Llama-2-7B", 32, 4096, 32, 32, 11008, 32000, True, "hf:meta-llama/Llama-2-7b-hf config.json"),
        # huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json
        ModelArch("Llama-2-13B", 40, 5120, 40, 40, 13824, 32000, True, "hf:meta-llama/Llama-2-13b-hf config.json"),
        # huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json (GQA, 8 KV heads)
        ModelArch("Llama-2-70B", 80, 8192, 64, 8, 28672, 32000, True, "hf:meta-llama/Llama-2-70b-hf config.json"),
        # huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
        ModelArch("Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, True, "hf:meta-llama/Meta-Llama-3-8B config.json",
                  max_context=8192),
        # huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json: Llama-3-8B's shapes with a
        # 131072-token context (max_position_embeddings; rope_scaling llama3)
        ModelArch("Llama-3.1-8B", 32, 4096, 32, 8, 14336, 128256, True, "hf:meta-llama/Llama-3.1-8B config.json",
                  max_context=131072),
        # huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
        ModelArch("Llama-3.1-70B", 80, 8192, 64, 8, 28672, 128256, True, "hf:meta-llama/Llama-3.1-70B config.json",
                  max_context=131072),
        # huggingface.co/meta-llama/Meta-Llama-3-70B/blob/main/config.json
        ModelArch("Llama-3-70B", 80, 8192, 64, 8, 28672, 128256, True, "hf:meta-llama/Meta-Llama-3-70B config.json",
                  max_context=8192),
        # huggingface.co/Qwen/Qwen-72B/blob/main/config.json: no GQA (kv = 64 heads); its
        # intermediate_size 49152 is the sum of both gate branches, so one branch is 24576
        ModelArch("Qwen-72B", 80, 8192, 64, 64, 24576, 152064, True, "hf:Qwen/Qwen-72B config.json",
                  max_context=32768),
        # huggingface.co/Qwen/Qwen2-72B/blob/main/config.json
        ModelArch("Qwen2-72B", 80, 8192, 64, 8, 29568, 152064, True, "hf:Qwen/Qwen2-72B config.json",
                  max_context=32768),
        # huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json
        ModelArch("Qwen2.5-7B", 28, 3584, 28, 4, 18944, 152064, True, "hf:Qwen/Qwen2.5-7B config.json",
                  max_context=32768),
        # huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json
        ModelArch("Mistral-7B", 32, 4096, 32, 8, 14336, 32000, True, "hf:mistralai/Mistral-7B-v0.1 config.json",
                  max_context=32768),
    ]
}

_SUFFIXES = ("-hf", "-chat", "-instruct", "-base")


def _norm(name: str) -> str:
    s = name.strip().lower().split("/")[-1]
    changed = True
    while changed:
        changed = False
        stripped = re.sub(r"-v0\.\d+$", "", s)  # Mistral-7B-v0.1 / -Instruct-v0.2: same shapes
        for suf in _SUFFIXES:
            if stripped.endswith(suf):
                stripped = stripped[: -len(suf)]
        if stripped != s:
            s, changed = stripped, True
    s = s.replace("meta-llama-", "llama-")
    return re.sub(r"[^a-z0-9.]", "", s)


_BY_NORM = {_norm(k): k for k in MODELS}


def canonical_model(name: str) -> str | None:
    """Map 'meta-llama/Llama-2-7b-chat-hf', 'llama2-7b' (AIBrix) ... to a built-in name, or None."""
    return _BY_NORM.get(_norm(name))


def model_arch(name: str) -> ModelArch:
    key = canonical_model(name)
    if key is None:
        raise KeyError(f"unknown model {name!r}; known architectures: {', '.join(sorted(MODELS))}")
    return MODELS[key]
