"""The functional pass as it was before issue 14 (commit 39e116e), frozen as the oracle of
tests/test_functional_fast.py: the faster pass must give the same masks, chunk tables and metrics bit for bit.

Only the pieces the new pass replaced are copied here (quantile thresholds, masked softmax, accuracy counters);
the primitives both share (approximate scores, pruning rules, chunk counts) are imported."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from soc.attention.approx import approx_scores
from soc.attention.exact import kv_for_heads, scores, valid_mask, weighted_sum
from soc.attention.plan import chunk_counts
from soc.attention.pruning import _valid_3d, fixed_thresholds, prune_mask
from soc.attention.spec import LayerRule, PruningSpec

MAX_LAYER_ELEMENTS = 2 ** 26
CALIBRATION_SAMPLE_CAP = 2 ** 24
CHUNK_INDEX_KEYS = ("layer", "head", "qtile", "ktile")
COUNT_KEYS = ("q_rows", "k_cols", "pairs_valid", "pairs_kept", "union_keys", "new_keys", "rows_kept",
              "prev_union_keys", "shared_prev_keys")


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


def calibrate_thresholds(approx: np.ndarray, valid: np.ndarray, target_kept_fraction: float,
                         granularity: str = "head") -> np.ndarray:
    """Comparator references (H,) such that the fraction of valid pairs with s~ >= thr is nearest the target.

    ``granularity`` 'head': one quantile per head; 'layer': one quantile over all heads, repeated.
    """
    if not 0.0 < target_kept_fraction <= 1.0:
        raise ValueError(f"target_kept_fraction: expected a number in (0, 1], got {target_kept_fraction}")
    heads = approx.shape[0]
    _valid_3d(valid, approx.shape)
    if valid.ndim == 2:
        vals = approx[:, valid]  # (H, n valid) in one gather: validity is shared by the heads
        if granularity == "head":
            return quantile_threshold(vals, target_kept_fraction)
        if granularity == "layer":
            return np.repeat(quantile_threshold(vals.reshape(1, -1), target_kept_fraction), heads)
    else:
        if granularity == "head":
            return np.concatenate([quantile_threshold(approx[h][valid[h]][None, :], target_kept_fraction)
                                   for h in range(heads)])
        if granularity == "layer":
            return np.repeat(quantile_threshold(approx[valid][None, :], target_kept_fraction), heads)
    raise ValueError(f"granularity: expected 'head' or 'layer', got {granularity!r}")


def softmax_masked(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row softmax over the True entries of ``mask``; masked entries get 0, and a row with none is all 0."""
    x = np.where(mask, logits, np.float32(-np.inf)).astype(np.float32, copy=False)
    row_max = x.max(axis=-1, keepdims=True)
    # An empty row has max -inf; shifting by 0 keeps exp(-inf) = 0 instead of producing NaN.
    row_max[~np.isfinite(row_max)] = 0.0
    x -= row_max
    np.exp(x, out=x)
    total = x.sum(axis=-1, keepdims=True)
    total[total == 0] = 1.0
    x /= total
    return x


@dataclass
class _Counts:
    valid_pairs: int = 0
    kept_pairs: int = 0
    rows: int = 0
    mass_sum: float = 0.0
    top1_hits: int = 0
    empty_rows: int = 0
    err_sq: float = 0.0
    ref_sq: float = 0.0

    def merge(self, other: _Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        return {
            "kept_fraction": self.kept_pairs / self.valid_pairs if self.valid_pairs else 1.0,
            "mass_kept": self.mass_sum / self.rows if self.rows else 1.0,
            "output_rel_err": _rel_err(self.err_sq, self.ref_sq),
            "top1_agreement": self.top1_hits / self.rows if self.rows else 1.0,
            "empty_rows": self.empty_rows,
            "valid_pairs": self.valid_pairs,
            "kept_pairs": self.kept_pairs,
            "query_rows": self.rows,
        }


def _rel_err(err_sq: float, ref_sq: float) -> float:
    # An all-zero exact output (V = 0) has no scale: report the absolute error instead of dividing by zero.
    if ref_sq > 0:
        return float(np.sqrt(err_sq / ref_sq))
    return float(np.sqrt(err_sq))


def layer_counts(valid: np.ndarray, keep: np.ndarray, logits: np.ndarray, probs_exact: np.ndarray,
                 out_exact: np.ndarray, out_pruned: np.ndarray) -> _Counts:
    """The accuracy counters of one layer (or a slice of its heads); arrays (H, Sq, Sk) / (H, Sq, D)."""
    heads = keep.shape[0]
    valid_b = np.broadcast_to(valid, keep.shape)
    row_has_valid = valid_b.any(axis=-1)
    row_has_kept = keep.any(axis=-1)
    mass = np.einsum("hqk,hqk->hq", probs_exact, keep, dtype=np.float64, casting="unsafe")
    # argmax returns the first maximum and kept keys are a subset of valid ones, so the pruned argmax equals
    # the exact one exactly when the exact argmax key is kept.
    exact_arg = np.where(valid_b, logits, -np.inf).argmax(axis=-1)
    agree = np.take_along_axis(keep, exact_arg[..., None], axis=-1)[..., 0]
    diff = out_pruned.astype(np.float64) - out_exact
    valid_pairs = np.count_nonzero(valid) * (heads if valid.ndim == 2 else 1)
    return _Counts(
        valid_pairs=int(valid_pairs),
        kept_pairs=int(np.count_nonzero(keep)),
        rows=int(np.count_nonzero(row_has_valid)),
        mass_sum=float(mass[row_has_valid].sum()),
        top1_hits=int(np.count_nonzero(agree & row_has_valid)),
        empty_rows=int(np.count_nonzero(row_has_valid & ~row_has_kept)),
        err_sq=float(np.vdot(diff, diff)),
        ref_sq=float(np.vdot(out_exact.astype(np.float64), out_exact)),
    )


@dataclass
class AccuracyTally:
    """Accumulates accuracy counters layer by layer (a layer may be added in several head slices)."""

    layers: dict[int, _Counts] = field(default_factory=dict)

    def add_layer(self, layer: int, *, valid: np.ndarray, keep: np.ndarray, logits: np.ndarray,
                  probs_exact: np.ndarray, out_exact: np.ndarray, out_pruned: np.ndarray) -> None:
        """Add the pairs of ``layer`` (all heads or a slice of them): shapes as in :func:`layer_counts`."""
        counts = layer_counts(valid, keep, logits, probs_exact, out_exact, out_pruned)
        self.layers.setdefault(layer, _Counts()).merge(counts)

    def total(self) -> _Counts:
        out = _Counts()
        for counts in self.layers.values():
            out.merge(counts)
        return out

    def as_dict(self) -> dict:
        """Trace-wide kept_fraction, mass_kept, output_rel_err, top1_agreement, empty_rows and counts."""
        return self.total().summary()

    def per_layer(self) -> list[dict]:
        """The same summary for each layer, in layer order, with its ``layer`` index."""
        return [{"layer": layer, **self.layers[layer].summary()} for layer in sorted(self.layers)]

@dataclass
class FunctionalResult:
    """What the functional pass hands to the timing model and the report.

    ``chunks`` and ``dense_chunks`` hold flat int64 arrays in (layer, head, qtile, ktile) order under
    :data:`CHUNK_INDEX_KEYS` + :data:`~soc.attention.plan.COUNT_KEYS`; chunks with no valid pair are dropped,
    so the two tables align row by row (``dense_chunks`` is the no-pruning counterfactual, keep = valid).
    """

    chunks: dict[str, np.ndarray]
    dense_chunks: dict[str, np.ndarray]
    accuracy: dict
    per_layer: list[dict]
    output: np.ndarray | None = None
    masks: list[np.ndarray] | None = None


def _head_slices(heads: int, seq_q: int, seq_k: int, group: int = 1) -> list[tuple[int, int]]:
    if heads * seq_q * seq_k <= MAX_LAYER_ELEMENTS:
        return [(0, heads)]
    return [(h, h + group) for h in range(0, heads, group)]  # whole GQA groups (since issue 13)


def _head_rngs(seed: int, stream: int, layer: int, h0: int, h1: int) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, stream, layer, h]) for h in range(h0, h1)]


def _layer32(arr: np.ndarray, layer: int, name: str) -> np.ndarray:
    out = np.asarray(arr[layer], dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name}: expected finite values, found NaN or inf in layer {layer}")
    return out


def _calibrate(rule: LayerRule, q_l: np.ndarray, k_l: np.ndarray, valid: np.ndarray, pruning: PruningSpec,
               scale: float, seed: int, stream: int, layer: int) -> np.ndarray:
    """Calibrated thresholds (H,) of one layer from the approximate scores of (q_l, k_l)."""
    heads, seq_q, _ = q_l.shape
    frac = float(rule.target_kept_fraction)
    slices = _head_slices(heads, seq_q, k_l.shape[1])
    thr = np.empty(heads)
    samples = []
    stride = max(1, math.ceil(heads * int(np.count_nonzero(valid)) / CALIBRATION_SAMPLE_CAP))
    for h0, h1 in slices:
        approx = approx_scores(q_l[h0:h1], kv_for_heads(k_l, h0, h1, heads), pruning.quant, scale,
                               head_rngs=_head_rngs(seed, stream, layer, h0, h1)).scores
        if rule.granularity == "head" or len(slices) == 1:
            thr[h0:h1] = calibrate_thresholds(approx, valid, frac, rule.granularity)
        else:
            samples.append(approx[:, valid].ravel()[::stride])
    if samples:
        thr[:] = quantile_threshold(np.concatenate(samples)[None, :], frac)[0]
    return thr


def _layer_thresholds(rule: LayerRule, layer: int, q_l: np.ndarray, k_l: np.ndarray, valid: np.ndarray,
                      calibration: tuple | None, cal_valid: np.ndarray | None, pruning: PruningSpec,
                      scale: float, seed: int, inline_ok: bool, info: dict) -> tuple[np.ndarray | None, bool]:
    """The comparator references of a threshold layer (None for other rules) and whether the main loop must
    calibrate them itself on the replayed scores (per head, or the whole layer in one slice: no recompute)."""
    if rule.rule != "threshold":
        return None, False
    heads = q_l.shape[0]
    fixed = fixed_thresholds(rule, heads)
    if fixed is not None:
        return fixed, False
    if calibration is not None:
        info["calibrated_on"] = "calibration trace"
        cq, ck = (_layer32(arr, layer, f"calibration {name}") for arr, name in zip(calibration, "qk"))
        return _calibrate(rule, cq, ck, cal_valid, pruning, scale, seed, 1, layer), False
    info["calibrated_on"] = "replayed trace"
    if inline_ok or rule.granularity == "head":
        return np.empty(heads), True
    return _calibrate(rule, q_l, k_l, valid, pruning, scale, seed, 0, layer), False


def _flat_counts(counts: dict[str, np.ndarray], layer: int, h0: int) -> dict[str, np.ndarray]:
    heads, nq, nk = counts["q_rows"].shape
    index = np.indices((heads, nq, nk)).reshape(3, -1)
    flat = {"layer": np.full(index.shape[1], layer, dtype=np.int64), "head": index[0] + h0,
            "qtile": index[1], "ktile": index[2]}
    flat.update({key: counts[key].reshape(-1) for key in COUNT_KEYS})
    return {key: val.astype(np.int64, copy=False) for key, val in flat.items()}


def _concat_valid(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = CHUNK_INDEX_KEYS + COUNT_KEYS
    table = {key: np.concatenate([part[key] for part in parts]) for key in keys}
    live = table["pairs_valid"] > 0
    return {key: val[live] for key, val in table.items()}


def _dense_table(valid: np.ndarray, layers: int, heads: int, q_tile: int,
                 k_tile: int, group: int = 1) -> dict[str, np.ndarray]:
    """The no-pruning chunk table: identical for every (layer, KV group), so counted once and tiled.
    (Since issue 13, counts are per KV group: what a group's query heads share is counted once.)"""
    keep = np.broadcast_to(valid, (group, *valid.shape))
    one = _concat_valid([_flat_counts(chunk_counts(keep, valid, q_tile, k_tile, group), 0, 0)])
    per_group = len(one["pairs_valid"])
    groups = layers * heads // group
    table = {key: np.tile(val, groups) for key, val in one.items()}
    lg = np.repeat(np.arange(groups, dtype=np.int64), per_group)
    table["layer"] = lg // (heads // group)
    table["head"] = (lg % (heads // group)) * group + one["head"][np.tile(np.arange(per_group), groups)]
    return table


def run_functional(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float, causal: bool,
                   query_offset: int = 0, pruning: PruningSpec, q_tile: int, k_tile: int, seed: int = 0,
                   keep_output: bool = False, keep_masks: bool = False,
                   calibration: tuple[np.ndarray, np.ndarray] | None = None) -> FunctionalResult:
    """Prune and compute attention for every layer of a trace; see :class:`FunctionalResult`.

    q (layers, heads, seq_q, head_dim); k, v (layers, kv_heads, seq_k, head_dim). ``calibration`` is an
    optional (q, k) pair of another trace with the same heads and head_dim and at least as many layers: its
    approximate scores set the calibrated threshold references (its causal offset is seq_k - seq_q).
    """
    layers, heads, seq_q, head_dim = q.shape
    kv_heads, seq_k = k.shape[1:3]
    q_tile, k_tile, seed, query_offset = int(q_tile), int(k_tile), int(seed), int(query_offset)
    valid = valid_mask(seq_q, seq_k, causal, query_offset)
    cal_valid = None
    if calibration is not None:
        cq, ck = calibration
        c_seq_q, c_seq_k = cq.shape[2], ck.shape[2]
        cal_valid = valid_mask(c_seq_q, c_seq_k, causal, c_seq_k - c_seq_q if causal else 0)

    slices = _head_slices(heads, seq_q, seq_k, heads // kv_heads)
    tally = AccuracyTally()
    parts: list[dict[str, np.ndarray]] = []
    per_layer: list[dict] = []
    output = np.empty((layers, heads, seq_q, head_dim), dtype=np.float32) if keep_output else None
    masks: list[np.ndarray] | None = [] if keep_masks else None

    for layer in range(layers):
        rule = pruning.for_layer(layer)
        q_l, k_l, v_l = (_layer32(arr, layer, name) for arr, name in ((q, "q"), (k, "k"), (v, "v")))
        info = {"layer": layer, **rule.describe()}
        thresholds, inline = _layer_thresholds(rule, layer, q_l, k_l, valid, calibration, cal_valid, pruning,
                                               scale, seed, len(slices) == 1, info)
        score_lsb = np.empty(heads)
        layer_mask = np.empty((heads, seq_q, seq_k), dtype=bool) if keep_masks else None

        for h0, h1 in slices:
            k_h, v_h = kv_for_heads(k_l, h0, h1, heads), kv_for_heads(v_l, h0, h1, heads)
            logits = scores(q_l[h0:h1], k_h, scale)
            probs_exact = softmax_masked(logits, valid)
            out_exact = weighted_sum(probs_exact, v_h)
            if rule.rule == "none":
                keep = np.broadcast_to(valid, logits.shape).copy()
                out_pruned = out_exact
            else:
                approx, score_lsb[h0:h1] = approx_scores(q_l[h0:h1], k_h, pruning.quant, scale,
                                                         head_rngs=_head_rngs(seed, 0, layer, h0, h1))
                if inline:
                    frac = float(rule.target_kept_fraction)
                    thresholds[h0:h1] = calibrate_thresholds(approx, valid, frac, rule.granularity)
                keep = prune_mask(approx, valid, rule, None if thresholds is None else thresholds[h0:h1],
                                  query_offset=query_offset)
                del approx
                out_pruned = weighted_sum(softmax_masked(logits, keep), v_h)
            tally.add_layer(layer, valid=valid, keep=keep, logits=logits, probs_exact=probs_exact,
                            out_exact=out_exact, out_pruned=out_pruned)
            parts.append(_flat_counts(chunk_counts(keep, valid, q_tile, k_tile, heads // kv_heads), layer, h0))
            if output is not None:
                output[layer, h0:h1] = out_pruned
            if layer_mask is not None:
                layer_mask[h0:h1] = keep
        if thresholds is not None:
            info["thresholds"] = [float(t) for t in thresholds]
        if rule.rule != "none":
            # The comparator's resolution in logit units: one LSB of the integer MSB dot product, per head.
            info["score_lsb"] = [float(x) for x in score_lsb]
        per_layer.append(info)
        if masks is not None:
            masks.append(layer_mask)

    for info, summary in zip(per_layer, tally.per_layer()):
        info.update({key: val for key, val in summary.items() if key != "layer"})
    return FunctionalResult(chunks=_concat_valid(parts),
                            dense_chunks=_dense_table(valid, layers, heads, q_tile, k_tile, heads // kv_heads),
                            accuracy=tally.as_dict(), per_layer=per_layer, output=output, masks=masks)
