"""The analog CIM core's approximate attention score, with the array's non-idealities.

Q and K are quantized symmetrically per head to ``full_bits`` integers; the array only sees their most
significant bits. How the dropped LSBs are represented is ``quant.rounding``:

- ``floor``: an arithmetic right shift by ``full_bits - bits`` (the value m stands for the bin's lower edge,
  so every operand is biased by about half a step);
- ``round``: add half a step, then shift (saturating at the top code);
- ``center``: the shifted value plus the bin's centre offset ``(2**s - 1) / 2**(s+1)``, s the shift (the
  array stores the odd code 2m + 1 on one extra bit, or adds a per-key correction written with the key).

The charge-domain array computes the dot product of those values in units of one LSB. A chip instance has a
fixed pattern drawn once from ``quant.chip_seed``: per comparator column (one stored key slot, key index mod
the keys the array holds) a gain error from capacitor mismatch and an offset of the column's comparator. Each
evaluation adds thermal noise (2**16 equiprobable normal levels, :func:`noise_codes`); its sigma combines
``noise_sigma_lsb`` and ``noise_fraction_fs`` x full scale in quadrature. Full scale is the largest |dot
product| the array can produce: ``head_dim * 2**(query_bits-1) * 2**(key_bits-1)`` LSB. Multiplying by the
units of Q and K and by the softmax scale expresses the result in softmax-logit units, so thresholds and
margins compare directly with exact logits.

The dot products run as a float32 matmul on integer-valued arrays (centre codes are scaled to integers by a
power of two): exact while |sum| < 2**24, and ~40x faster than numpy's integer matmul. With a fixed pattern,
each key's gain, the LSB and the column offset (one extra input column) ride in the same matmul: float32
rounding of about 1e-7 of a score, far below the noise.
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import NamedTuple, Sequence

import numpy as np

from soc.attention.exact import Scratch, kv_for_heads, scratch_array
from soc.attention.spec import ROUNDINGS, CimQuantSpec
from soc.rules import pair_of_kv_head

#: Equiprobable levels of the thermal-noise draw (16-bit uniforms, see :func:`noise_codes`).
NOISE_LEVELS = 1 << 16
#: Stream tag of the chip instance's fixed-pattern draw (distinct from the evaluation noise streams).
CHIP_STREAM = 7


class ApproxScores(NamedTuple):
    """Approximate logits (H, Sq, Sk) float32 and the logit value of one integer unit per head (H,)."""

    scores: np.ndarray
    score_lsb: np.ndarray


def _codes(x: np.ndarray, bits: int, full_bits: int, rounding: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(integer-valued float32 codes, step of one full-precision unit, divisor) with value = codes / divisor
    in units of one MSB step; the divisor is a power of two, so the division is exact."""
    if not 1 <= bits <= full_bits:
        raise ValueError(f"bits: expected an integer in [1, full_bits={full_bits}], got {bits}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: expected one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    x32 = np.asarray(x, dtype=np.float32)
    axes = tuple(range(max(x32.ndim - 2, 0), x32.ndim))
    qmax = float(2 ** (full_bits - 1) - 1)
    peak = np.abs(x32).max(axis=axes, keepdims=True) if x32.size else np.zeros((1,) * x32.ndim, np.float32)
    # An all-zero tensor quantizes to zeros whatever the scale; 1.0 avoids dividing by zero.
    step = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    ints = np.clip(np.rint(x32 / step), -qmax, qmax)
    shift = float(2 ** (full_bits - bits))
    if rounding == "floor":
        return np.floor(ints / shift).astype(np.float32), step, 1.0
    if rounding == "round":
        top = float(2 ** (bits - 1))
        return np.clip(np.floor(ints / shift + 0.5), -top, top - 1).astype(np.float32), step, 1.0
    # centre of the bin [shift*m - 1/2, shift*(m+1) - 1/2) of the full-precision code, times 2*shift
    return (2.0 * shift * np.floor(ints / shift) + (shift - 1.0)).astype(np.float32), step, 2.0 * shift


def msb_quantize(x: np.ndarray, bits: int, full_bits: int,
                 rounding: str = "floor") -> tuple[np.ndarray, np.ndarray]:
    """Keep the top ``bits`` of a symmetric ``full_bits`` quantization of ``x``.

    One scale per matrix: the last two axes form one tensor (one head), leading axes index heads; a 1-D ``x``
    is one tensor. Returns (float32 array of x's shape in units of one MSB step, lsb) where ``lsb`` (shape
    x.shape[:-2], or () for 1-D) is the real value of one unit. ``floor`` and ``round`` give integers,
    ``center`` integers plus the bin-centre offset.
    """
    codes, step, div = _codes(x, bits, full_bits, rounding)
    shift = float(2 ** (full_bits - bits))
    lsb = (step * shift).reshape(codes.shape[:-2] if codes.ndim >= 2 else ())
    return (codes / np.float32(div)).astype(np.float32), lsb.astype(np.float64)


def full_scale_lsb(quant: CimQuantSpec, head_dim: int) -> float:
    """The largest |dot product| the array can produce, in LSB: head_dim x 2**(qb-1) x 2**(kb-1)."""
    return float(head_dim) * 2.0 ** (quant.query_bits - 1) * 2.0 ** (quant.key_bits - 1)


def thermal_sigma_lsb(quant: CimQuantSpec, head_dim: int) -> float:
    """Per-evaluation noise sigma in LSB: noise_sigma_lsb and noise_fraction_fs x full scale in quadrature."""
    return math.hypot(quant.noise_sigma_lsb, quant.noise_fraction_fs * full_scale_lsb(quant, head_dim))


def key_slots(quant: CimQuantSpec, head_dim: int) -> int:
    """Keys the array holds at once (comparator columns): array_cols // ceil(head_dim * key_bits / rows)."""
    return max(1, quant.array_cols // math.ceil(head_dim * quant.key_bits / quant.array_rows))


def chip_pattern(quant: CimQuantSpec, head_dim: int, core: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed pattern of one CIM core of chip ``quant.chip_seed``: (gain error, offset in LSB) per column.

    Drawn from ``default_rng([chip_seed, CHIP_STREAM, core])`` whatever the evaluation seed, so every
    evaluation, layer and head on that core sees the same columns.
    """
    slots = key_slots(quant, head_dim)
    gen = np.random.default_rng([quant.chip_seed, CHIP_STREAM, int(core)])
    gain = quant.gain_sigma_fraction * gen.standard_normal(slots)
    offset = quant.offset_fraction_fs * full_scale_lsb(quant, head_dim) * gen.standard_normal(slots)
    return gain, offset


def head_cores(layer: int, heads: int, h0: int, h1: int, cores: int, kv_heads: int | None = None) -> list[int]:
    """The CIM core that scores each head h0..h1-1 of ``layer``: the system's assignment of (layer, KV head)
    to its core pairs (``soc.rules.pair_of_kv_head``)."""
    group = heads // (kv_heads or heads)
    return [int(pair_of_kv_head(layer, h // group, heads // group, cores)) for h in range(h0, h1)]


@functools.lru_cache(maxsize=1)
def _noise_levels() -> np.ndarray:
    """The 2**16 equiprobable levels of a unit normal (quantiles at (i + 1/2) / 2**16), scaled to unit variance."""
    inv = statistics.NormalDist().inv_cdf
    levels = np.array([inv((i + 0.5) / NOISE_LEVELS) for i in range(NOISE_LEVELS // 2, NOISE_LEVELS)])
    levels = np.concatenate([-levels[::-1], levels])  # exactly symmetric: zero mean
    levels /= np.sqrt(np.mean(levels ** 2))
    out = levels.astype(np.float32)
    out.setflags(write=False)
    return out


def noise_codes(gen: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uniform 16-bit indices into :func:`_noise_levels`, from the generator's raw 64-bit words (four per
    word). An inverse transform: ~5x cheaper than ``standard_normal``; tails beyond 4.32 sigma are not
    represented (a true normal puts 1.5e-5 of its draws there), the variance is exact."""
    return gen.bit_generator.random_raw((n + 3) // 4).view(np.uint16)[:n]


def _pattern_rows(quant: CimQuantSpec, head_dim: int, cores: Sequence[int], seq_k: int,
                  key_offset: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per head, (1 + gain[col], offset[col]) float32 over the keys (col = key index mod the array's slots),
    or None when the chip has no fixed pattern."""
    if quant.gain_sigma_fraction == 0 and quant.offset_fraction_fs == 0:
        return None
    col = (np.arange(seq_k) + key_offset) % key_slots(quant, head_dim)
    rows = {}
    for core in set(cores):
        gain, offset = chip_pattern(quant, head_dim, core)
        rows[core] = ((1.0 + gain[col]).astype(np.float32), offset[col].astype(np.float32))
    return [rows[c] for c in cores]


def approx_scores(q: np.ndarray, k: np.ndarray, quant: CimQuantSpec, scale: float,
                  rng: np.random.Generator | None = None, *, head_rngs: list | None = None,
                  cores: Sequence[int] | None = None, key_offset: int = 0,
                  blocks: Sequence[tuple[int, int, int]] | None = None,
                  scratch: Scratch | None = None) -> ApproxScores:
    """Approximate logits of one layer: q (H, Sq, D), k (KV, Sk, D) -> ApproxScores((H, Sq, Sk), (H,)).

    Thermal noise (when its sigma is > 0, see :func:`noise_codes`) is drawn from ``rng`` (one draw per head,
    in head order) or from ``head_rngs[h]`` for head h (so the draw does not depend on how heads are batched).
    With zero noise no random number is drawn. ``cores`` gives the CIM core of each head (default all core 0;
    see :func:`head_cores`) and ``key_offset`` the position of k's first key, which fix each key's comparator
    column: score = lsb x ((1 + gain[col]) x dot + offset[col] + noise). ``blocks`` (first row, end row,
    keys), from :func:`~soc.attention.exact.row_blocks`: compute only the pairs inside them (the others,
    invalid, read -inf); the noise of a pair is the same with or without blocks. With a ``scratch``, the
    scores are its buffer ``"scores"`` (valid until the next call with that scratch).
    """
    heads, seq_q, head_dim = q.shape
    seq_k = k.shape[1]
    q_code, step_q, div_q = _codes(q, quant.query_bits, quant.full_bits, quant.rounding)
    k_code, step_k, div_k = _codes(k, quant.key_bits, quant.full_bits, quant.rounding)
    k_code_h = kv_for_heads(k_code, 0, heads, heads)
    lsb_q = (step_q * 2.0 ** (quant.full_bits - quant.query_bits)).reshape(heads).astype(np.float64)
    lsb_k = (step_k * 2.0 ** (quant.full_bits - quant.key_bits)).reshape(-1).astype(np.float64)
    lsb_k_h = kv_for_heads(lsb_k[:, None, None], 0, heads, heads)[:, 0, 0]
    score_lsb = lsb_q * lsb_k_h * float(scale)
    lsb = score_lsb.astype(np.float32)
    unit = np.float32(1.0 / (div_q * div_k))  # a power of two: exact
    cores = [0] * heads if cores is None else list(cores)
    if len(cores) != heads:
        raise ValueError(f"cores: expected {heads} core indices (one per head), got {len(cores)}")
    pattern = _pattern_rows(quant, head_dim, cores, seq_k, key_offset)
    if pattern is None:  # integer codes: the matmul is exact, then one exact scaling by the LSB
        q_eff, k_eff = q_code, k_code_h
    else:  # gain, offset and LSB ride in the matmul: the key's column weight and one extra column
        q_eff = np.concatenate([q_code, np.ones((heads, seq_q, 1), np.float32)], axis=-1)
        k_eff = np.empty((heads, seq_k, head_dim + 1), np.float32)
        for h, (gain_row, offset_row) in enumerate(pattern):
            np.multiply(k_code_h[h], (gain_row * (unit * lsb[h]))[:, None], out=k_eff[h, :, :head_dim])
            k_eff[h, :, head_dim] = offset_row * lsb[h]
    blocks = [(0, seq_q, seq_k)] if blocks is None else list(blocks)
    dots = scratch_array(scratch, "scores", (heads, seq_q, seq_k), np.float32)
    if blocks == [(0, seq_q, seq_k)]:
        np.matmul(q_eff, k_eff.transpose(0, 2, 1), out=dots)
    else:
        for r0, r1, end in blocks:
            np.matmul(q_eff[:, r0:r1], k_eff[:, :end].transpose(0, 2, 1), out=dots[:, r0:r1, :end])
            dots[:, r0:r1, end:] = -np.inf
    sigma = thermal_sigma_lsb(quant, head_dim)
    gens = None
    if sigma > 0:
        if head_rngs is not None:
            if len(head_rngs) != heads:
                raise ValueError(f"head_rngs: expected {heads} generators, got {len(head_rngs)}")
            gens = head_rngs
        elif rng is not None:
            gens = [rng] * heads
        else:
            raise ValueError(f"rng: the thermal noise sigma is {sigma} LSB but no random generator was given")
    if pattern is not None and gens is None:
        return ApproxScores(dots, score_lsb)
    for h in range(heads):  # head by head: each pass runs on one head's scores, in cache
        if gens is not None:  # one draw per pair of the whole matrix, whatever the blocks
            idx = noise_codes(gens[h], seq_q * seq_k).reshape(seq_q, seq_k)
            levels = _noise_levels() * np.float32(sigma * float(lsb[h]))
        for r0, r1, end in blocks:
            d = dots[h, r0:r1, :end]
            if pattern is None:
                d *= unit * lsb[h]
            if gens is not None:
                noise = scratch_array(scratch, "temp", (r1 - r0, end), np.float32)
                np.take(levels, idx[r0:r1, :end], out=noise, mode="wrap")  # 16-bit codes: always in range
                d += noise
    return ApproxScores(dots, score_lsb)
