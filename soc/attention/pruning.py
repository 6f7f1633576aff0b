"""The comparator stage: which (query, key) pairs survive to the digital processor.

Input is the CIM's approximate score s~ (H, Sq, Sk) in softmax-logit units and the causal validity (Sq, Sk).
Invalid pairs are never kept. The rules (see :mod:`soc.attention.spec`):

- ``threshold``: s~ >= thr[h]. The reference is fixed or calibrated as a quantile of s~ over valid pairs so
  that a target fraction survives. A row may end up with no kept key: the hardware comparator has no
  fall-back, so that row's output is zero (counted as an empty row).
- ``margin``: s~ >= max over valid keys of s~ in the row - margin; the row max itself always survives.
- ``topk``: the k highest s~ among the row's valid keys, k = topk_keys or ceil(fraction * valid keys),
  clipped to [1, valid keys]; ties go to the earlier key, so exactly k survive.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from soc.attention.exact import MaskMemo, Scratch, all_valid, row_blocks, scratch_array
from soc.attention.spec import LayerRule, SpecError


def _valid_3d(valid: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if valid.shape not in (shape[1:], shape):
        raise ValueError(f"valid: expected shape {shape[1:]} or {shape}, got {valid.shape}")
    return valid


def quantile_threshold(vals: np.ndarray, target: float) -> np.ndarray:
    """Per row of ``vals`` (R, n): the threshold whose count of vals >= thr is nearest round(target * n)."""
    rows, n = vals.shape
    if n == 0:
        return np.zeros(rows)
    want = min(max(int(round(target * n)), 1), n)
    kth = n - want  # ascending position of the want-th largest value
    part = np.partition(vals, kth, axis=1)
    thr = part[:, kth:kth + 1]
    # After the partition everything from kth on is >= thr: "s >= thr" keeps want + the ties below kth.
    count_ge = want + np.count_nonzero(part[:, :kth] == thr, axis=1)
    out = thr[:, 0].astype(np.float64)
    tied = count_ge > want
    if tied.any():
        # Ties (integer-valued scores without noise) can overshoot; the next distinct value up may be closer.
        upper = part[tied, kth + 1:]
        count_gt = np.count_nonzero(upper > thr[tied], axis=1)
        above = np.where(upper > thr[tied], upper, np.inf).min(axis=1, initial=np.inf)
        better = np.isfinite(above) & (np.abs(count_gt - want) < count_ge[tied] - want)
        out[np.flatnonzero(tied)[better]] = above[better]
    return out


#: Values sampled (with replacement, at fixed pseudo-random positions) to bracket a quantile before the exact pass.
BAND_SAMPLE = 1 << 14
#: Half-width of the bracket, in sample standard deviations of the quantile's rank (a miss only costs a retry).
BAND_SIGMAS = 6.0


@functools.lru_cache(maxsize=8)
def _sample_positions(size: int) -> np.ndarray:
    """Fixed pseudo-random positions in an array of ``size`` values (the same for every head of a shape)."""
    idx = np.random.default_rng([size, BAND_SAMPLE]).integers(0, size, size=BAND_SAMPLE)
    idx.setflags(write=False)
    return idx


def _quantile_in_band(x: np.ndarray, valid: np.ndarray | None, n: int, target: float,
                      blocks: list[tuple[int, int, int]] | None = None,
                      scratch: Scratch | None = None) -> float | None:
    """:func:`quantile_threshold` of the valid entries of ``x`` (a set of heads seen as one row), without
    gathering or partitioning them all: a sample brackets the quantile in a value band, counts place the band
    among all values, and a partial partition of the band alone finds the exact value. None if the sample's
    band missed (the caller then takes the full path; the answer never depends on the sample). ``blocks``
    (:func:`~soc.attention.exact.row_blocks` of a causal validity) limit the counting passes to the pairs
    that may be valid."""
    want = min(max(int(round(target * n)), 1), n)
    kth = n - want
    flat = x.reshape(-1)
    idx = _sample_positions(flat.size)
    sample = flat[idx] if valid is None else flat[idx][valid.reshape(-1)[idx % valid.size]]
    if sample.size < 64:
        return None
    p = kth / n
    half = BAND_SIGMAS * math.sqrt(max(p * (1 - p), 1.0 / sample.size) / sample.size) + 2.0 / sample.size
    i_lo, i_hi = int(math.floor((p - half) * sample.size)), int(math.ceil((p + half) * sample.size))
    start = 0
    for i in (i_lo, i_hi):  # one kth at a time: numpy's partition with two kth is several times slower than two calls
        if start <= i < sample.size:
            sample[start:].partition(i - start)
            start = i + 1
    lo = sample[i_lo] if 0 <= i_lo < sample.size else -np.inf
    hi = sample[i_hi] if 0 <= i_hi < sample.size else np.inf
    n_inside, bands = 0, []
    for r0, r1, end in blocks or [(0, x.shape[-2], x.shape[-1])]:  # valid pairs all lie inside the blocks
        xb = x[..., r0:r1, :end]
        inside = np.greater_equal(xb, lo, out=scratch_array(scratch, "mask", xb.shape, bool))
        if valid is not None:
            inside &= valid[..., r0:r1, :end]
        n_inside += int(np.count_nonzero(inside))
        inside &= np.less_equal(xb, hi, out=scratch_array(scratch, "temp", xb.shape, bool))
        # the flagged values in memory order; on a contiguous block an index gather beats a boolean one
        bands.append(xb.reshape(-1).take(np.flatnonzero(inside)) if xb.flags.c_contiguous else xb[inside])
    n_below = n - n_inside
    band = bands[0] if len(bands) == 1 else np.concatenate(bands)  # the same values, whatever their order
    n_above = n - n_below - band.size
    if not n_below <= kth < n_below + band.size:
        return None
    j = kth - n_below
    thr = np.partition(band, j)[j]
    count_ge = n_above + int(np.count_nonzero(band >= thr))
    out = float(thr)
    if count_ge > want:  # the tie rule of quantile_threshold, on counts
        greater = band[band > thr]
        count_gt = n_above + greater.size
        if greater.size:
            above = float(greater.min())
        elif n_above:
            over = x > hi if valid is None else (x > hi) & valid
            above = float(x[over].min())
        else:
            above = math.inf
        if math.isfinite(above) and abs(count_gt - want) < count_ge - want:
            out = above
    return out


def _set_quantile(x: np.ndarray, valid: np.ndarray | None, target: float,
                  blocks: list[tuple[int, int, int]] | None = None, scratch: Scratch | None = None) -> float:
    """The quantile threshold of the valid entries of ``x`` (valid broadcast over x's leading axes)."""
    full = None if valid is None else np.broadcast_to(valid, x.shape)
    n = x.size if valid is None else int(np.count_nonzero(valid)) * (x.size // valid.size)
    if n == 0:
        return 0.0
    got = _quantile_in_band(x, valid, n, target, blocks, scratch)
    if got is not None:
        return got
    vals = x.reshape(-1) if full is None else x[full]
    return float(quantile_threshold(vals[None, :], target)[0])


_FREE = MaskMemo()


def _free_pairs(valid: np.ndarray, forced: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The valid pairs a comparator decides (valid and not forced), and the counts of valid and free pairs."""
    def compute() -> tuple[np.ndarray, int, int]:
        free = valid & ~forced
        free.setflags(write=False)
        return free, int(np.count_nonzero(valid)), int(np.count_nonzero(free))
    return _FREE.get((valid, forced), None, compute)


def calibrate_thresholds(approx: np.ndarray, valid: np.ndarray, target_kept_fraction: float,
                         granularity: str = "head", forced: np.ndarray | None = None,
                         scratch: Scratch | None = None) -> np.ndarray:
    """Comparator references (H,) such that the fraction of valid pairs with s~ >= thr is nearest the target.

    ``granularity`` 'head': one quantile per head; 'layer': one quantile over all heads, repeated. Equal to
    :func:`quantile_threshold` over the gathered valid scores, found without gathering them (see
    :func:`_quantile_in_band`). ``forced`` (Sq, Sk): pairs kept whatever their score (sink and recent keys);
    the quantile is then taken over the other valid pairs so that forced + comparator-kept pairs make up the
    target. ``scratch`` (:class:`~soc.attention.exact.Scratch`) holds the counting passes' temporaries.
    """
    if not 0.0 < target_kept_fraction <= 1.0:
        raise ValueError(f"target_kept_fraction: expected a number in (0, 1], got {target_kept_fraction}")
    if granularity not in ("head", "layer"):
        raise ValueError(f"granularity: expected 'head' or 'layer', got {granularity!r}")
    heads = approx.shape[0]
    _valid_3d(valid, approx.shape)
    blocks = row_blocks(valid) if valid.ndim == 2 else None
    free, n_valid, n_free = _free_pairs(valid, forced) if forced is not None else (valid, 0, 0)
    if n_free < n_valid:  # some valid pair is forced
        share = (target_kept_fraction * n_valid - (n_valid - n_free)) / n_free if n_free else 0.0
        if share <= 0:  # the forced pairs alone reach the target: a finite reference above every score
            return approx.reshape(heads, -1).max(axis=1).astype(np.float64) + 1.0
        valid, target_kept_fraction = free, min(share, 1.0)
    shared = None if all_valid(valid) else valid  # a full validity needs no mask at all
    if granularity == "layer":
        return np.full(heads, _set_quantile(approx, shared, target_kept_fraction, blocks, scratch))
    if shared is not None and shared.ndim == 3:
        return np.array([_set_quantile(approx[h], shared[h], target_kept_fraction, scratch=scratch)
                         for h in range(heads)])
    return np.array([_set_quantile(approx[h], shared, target_kept_fraction, blocks, scratch)
                     for h in range(heads)])


def fixed_thresholds(rule: LayerRule, heads: int) -> np.ndarray | None:
    """The references of a threshold rule that needs no calibration (H,), or None if it must be calibrated."""
    if rule.threshold_per_head is not None:
        if len(rule.threshold_per_head) != heads:
            raise SpecError(f"threshold_per_head: expected {heads} values (one per head), "
                            f"got {len(rule.threshold_per_head)}")
        return np.asarray(rule.threshold_per_head, dtype=np.float64)
    if rule.threshold is not None:
        return np.full(heads, float(rule.threshold))
    return None


def _topk_mask(approx: np.ndarray, valid: np.ndarray, rule: LayerRule) -> np.ndarray:
    n_valid = np.count_nonzero(valid, axis=-1)  # (Sq,) or (H, Sq)
    if rule.topk_keys is not None:
        k = np.minimum(rule.topk_keys, n_valid)
    else:
        k = np.ceil(n_valid * float(rule.target_kept_fraction) - 1e-9).astype(np.int64)
    k = np.broadcast_to(np.minimum(np.maximum(k, 1), np.maximum(n_valid, 1)), approx.shape[:-1])
    neg = np.where(valid, -approx, np.inf)  # ascending order of neg = descending score; invalid last
    seq_k = approx.shape[-1]
    if np.all(k == k.flat[0]):
        kth = np.partition(neg, int(k.flat[0]) - 1, axis=-1)[..., int(k.flat[0]) - 1:int(k.flat[0])]
    else:  # causal rows see different numbers of keys: one sort gives every row its own k-th value
        kth = np.take_along_axis(np.sort(neg, axis=-1), (k - 1)[..., None], axis=-1)
    keep = neg < kth
    # Ties at the k-th value: keep the earliest tied keys until the row holds exactly k.
    room = k - np.count_nonzero(keep, axis=-1)
    tied = neg == kth
    rank = np.cumsum(tied, axis=-1, dtype=np.int32 if seq_k < 2**31 else np.int64)
    keep |= tied & (rank <= room[..., None])
    return keep


_FORCED = MaskMemo()


def forced_keys(valid: np.ndarray, rule: LayerRule, query_offset: int | None = None) -> np.ndarray | None:
    """(Sq, Sk) pairs kept whatever the scores: the first ``keep_sink_tokens`` keys and the
    ``keep_recent_tokens`` keys ending at the query's own position (``query_offset`` + row; by default the
    queries are the last rows, offset = seq_k - seq_q). None when the rule forces nothing. Read-only."""
    if not (rule.keep_sink_tokens or rule.keep_recent_tokens) or rule.rule == "none":
        return None

    def compute() -> np.ndarray:
        seq_q, seq_k = valid.shape[-2:]
        offset = seq_k - seq_q if query_offset is None else query_offset
        own = np.arange(seq_q)[:, None] + offset
        key = np.arange(seq_k)[None, :]
        # recent: own - recent < key <= own, compared by broadcasting (no (Sq, Sk) integer temporary)
        forced = key <= own
        forced &= key > own - rule.keep_recent_tokens
        forced |= key < rule.keep_sink_tokens
        forced &= valid if valid.ndim == 2 else valid.all(axis=0)
        forced.setflags(write=False)
        return forced
    return _FORCED.get((valid,), (rule.keep_sink_tokens, rule.keep_recent_tokens, query_offset), compute)


def prune_mask(approx: np.ndarray, valid: np.ndarray, rule: LayerRule,
               thresholds: np.ndarray | None = None, query_offset: int | None = None,
               scratch: Scratch | None = None) -> np.ndarray:
    """Bool (H, Sq, Sk): the pairs that survive ``rule``; never a causally invalid pair.

    For a calibrated threshold rule, ``thresholds`` (H,) may be given (e.g. calibrated on another trace);
    otherwise they are fixed by the rule or calibrated on ``approx`` itself. With a ``scratch``, a threshold
    rule's mask is its buffer ``"mask"`` (valid until the next call with that scratch).
    """
    _valid_3d(valid, approx.shape)
    heads = approx.shape[0]
    if rule.rule == "none":
        return np.broadcast_to(valid, approx.shape).copy()
    if rule.rule == "threshold":
        if thresholds is None:
            thresholds = fixed_thresholds(rule, heads)
        if thresholds is None:
            frac = float(rule.target_kept_fraction)
            thresholds = calibrate_thresholds(approx, valid, frac, rule.granularity,
                                              forced_keys(valid, rule, query_offset), scratch=scratch)
        thr = np.asarray(thresholds, dtype=np.float64)
        if thr.shape != (heads,):
            raise ValueError(f"thresholds: expected shape ({heads},), got {thr.shape}")
        keep = np.greater_equal(approx, thr.astype(approx.dtype)[:, None, None],
                                out=scratch_array(scratch, "mask", approx.shape, bool))
        if not all_valid(valid):
            keep &= valid
        return _with_forced(keep, valid, rule, query_offset)
    if rule.rule == "margin":
        row_max = np.where(valid, approx, -np.inf).max(axis=-1, keepdims=True)
        keep = approx >= (row_max - np.float32(rule.margin)).astype(approx.dtype)
        keep &= valid
        return _with_forced(keep, valid, rule, query_offset)
    if rule.rule == "topk":
        keep = _topk_mask(approx, valid, rule)
        keep &= valid
        return _with_forced(keep, valid, rule, query_offset)
    raise ValueError(f"rule: expected one of none, threshold, margin, topk, got {rule.rule!r}")


def _with_forced(keep: np.ndarray, valid: np.ndarray, rule: LayerRule, query_offset: int | None) -> np.ndarray:
    forced = forced_keys(valid, rule, query_offset)
    if forced is not None:
        keep |= forced
    return keep
