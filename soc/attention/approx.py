"""The analog CIM core's approximate attention score.

Q and K are quantized symmetrically per head to ``full_bits`` integers; the array only sees their most
significant bits (an arithmetic right shift by ``full_bits - bits``, i.e. floor division). The charge-domain
array computes the integer dot product of those MSBs; its readout adds Gaussian noise of ``noise_sigma_lsb``
integer units. Multiplying by the units of Q and K and by the softmax scale expresses the result in
softmax-logit units, so thresholds and margins compare directly with exact logits.

The integer dot products run as a float32 matmul on integer-valued arrays: exact while |sum| < 2**24
(8-bit x 8-bit MSBs x head_dim <= 1024 stays below that), and ~40x faster than numpy's integer matmul.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from soc.attention.exact import kv_for_heads
from soc.attention.spec import CimQuantSpec


class ApproxScores(NamedTuple):
    """Approximate logits (H, Sq, Sk) float32 and the logit value of one integer unit per head (H,)."""

    scores: np.ndarray
    score_lsb: np.ndarray


def msb_quantize(x: np.ndarray, bits: int, full_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the top ``bits`` of a symmetric ``full_bits`` quantization of ``x``.

    One scale per matrix: the last two axes form one tensor (one head), leading axes index heads; a 1-D ``x``
    is one tensor. Returns (integer-valued float32 array of x's shape, lsb) where ``lsb`` (shape x.shape[:-2],
    or () for 1-D) is the real value of one unit of the result.
    """
    if not 1 <= bits <= full_bits:
        raise ValueError(f"bits: expected an integer in [1, full_bits={full_bits}], got {bits}")
    x32 = np.asarray(x, dtype=np.float32)
    axes = tuple(range(max(x32.ndim - 2, 0), x32.ndim))
    qmax = float(2 ** (full_bits - 1) - 1)
    peak = np.abs(x32).max(axis=axes, keepdims=True) if x32.size else np.zeros((1,) * x32.ndim, np.float32)
    # An all-zero tensor quantizes to zeros whatever the scale; 1.0 avoids dividing by zero.
    step = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    ints = np.clip(np.rint(x32 / step), -qmax, qmax)
    shift = float(2 ** (full_bits - bits))
    msb = np.floor(ints / shift).astype(np.float32)
    lsb = (step * shift).reshape(x32.shape[:-2] if x32.ndim >= 2 else ())
    return msb, lsb.astype(np.float64)


def approx_scores(q: np.ndarray, k: np.ndarray, quant: CimQuantSpec, scale: float,
                  rng: np.random.Generator | None = None, *, head_rngs: list | None = None) -> ApproxScores:
    """Approximate logits of one layer: q (H, Sq, D), k (KV, Sk, D) -> ApproxScores((H, Sq, Sk), (H,)).

    Noise (when ``quant.noise_sigma_lsb > 0``) is drawn from ``rng`` for the whole array, or from
    ``head_rngs[h]`` for head h (so the draw does not depend on how heads are batched). With zero noise no
    random number is drawn.
    """
    heads = q.shape[0]
    q_int, lsb_q = msb_quantize(q, quant.query_bits, quant.full_bits)
    k_int, lsb_k = msb_quantize(k, quant.key_bits, quant.full_bits)
    k_int_h = kv_for_heads(k_int, 0, heads, heads)
    lsb_k_h = kv_for_heads(lsb_k[:, None, None], 0, heads, heads)[:, 0, 0]
    dots = np.matmul(q_int, k_int_h.transpose(0, 2, 1))
    sigma = quant.noise_sigma_lsb
    if sigma > 0:
        if head_rngs is not None:
            if len(head_rngs) != heads:
                raise ValueError(f"head_rngs: expected {heads} generators, got {len(head_rngs)}")
            for h, gen in enumerate(head_rngs):
                dots[h] += np.float32(sigma) * gen.standard_normal(dots.shape[1:], dtype=np.float32)
        elif rng is not None:
            dots += np.float32(sigma) * rng.standard_normal(dots.shape, dtype=np.float32)
        else:
            raise ValueError(f"rng: noise_sigma_lsb is {sigma} but no random generator was given")
    score_lsb = lsb_q * lsb_k_h * float(scale)
    dots *= score_lsb.astype(np.float32)[:, None, None]
    return ApproxScores(dots, score_lsb)
