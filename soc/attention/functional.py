"""The functional pass over a whole trace: approximate scores, pruning masks, exact pruned attention, accuracy
and the per-chunk counts that drive the timing model, all from the same masks.

Each layer is processed with all its heads vectorized; a layer whose score matrices exceed
:data:`MAX_LAYER_ELEMENTS` is processed one head at a time to bound memory. Analog noise for (layer, head) is
drawn from its own generator ``default_rng([seed, stream, layer, head])`` (stream 0: the replayed trace,
1: the calibration trace), so results are deterministic and do not depend on how heads are batched.
With zero noise no random number is drawn, so the seed has no effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from soc.attention.approx import approx_scores
from soc.attention.exact import kv_for_heads, scores, softmax_masked, valid_mask, weighted_sum
from soc.attention.metrics import AccuracyTally
from soc.attention.plan import COUNT_KEYS, chunk_counts
from soc.attention.pruning import calibrate_thresholds, fixed_thresholds, prune_mask, quantile_threshold
from soc.attention.spec import LayerRule, PruningSpec
from soc.errors import ConfigError, TraceError

#: Above this many score elements per layer (heads * seq_q * seq_k), heads are processed one at a time.
MAX_LAYER_ELEMENTS = 2 ** 26
#: Layer-granularity calibration over head-by-head layers uses at most this many (evenly strided) samples.
CALIBRATION_SAMPLE_CAP = 2 ** 24

CHUNK_INDEX_KEYS = ("layer", "head", "qtile", "ktile")


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
    tally: AccuracyTally | None = None  # the accuracy counters per layer (merging passes over disjoint layers)


def _head_slices(heads: int, seq_q: int, seq_k: int) -> list[tuple[int, int]]:
    if heads * seq_q * seq_k <= MAX_LAYER_ELEMENTS:
        return [(0, heads)]
    return [(h, h + 1) for h in range(heads)]


def _head_rngs(seed: int, stream: int, layer: int, h0: int, h1: int) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, stream, layer, h]) for h in range(h0, h1)]


def _check_trace(q: np.ndarray, k: np.ndarray, v: np.ndarray, what: str = "") -> tuple[int, ...]:
    """Shapes of a trace (layers, heads, seq_q, head_dim) + (kv_heads, seq_k); raise TraceError if bad."""
    for name, arr in (("q", q), ("k", k), ("v", v)):
        if arr is None and name == "v" and what:
            continue
        if not hasattr(arr, "ndim") or arr.ndim != 4:
            raise TraceError(f"{what}{name}: expected a 4-D array (layers, heads, seq, head_dim), "
                             f"got shape {getattr(arr, 'shape', type(arr).__name__)}")
        if arr.dtype.kind != "f":
            raise TraceError(f"{what}{name}: expected float16 or float32 values, got dtype {arr.dtype}")
    layers, heads, seq_q, head_dim = q.shape
    _, kv_heads, seq_k, _ = k.shape
    if v is not None and v.shape != k.shape:
        raise TraceError(f"{what}v: expected the shape of k {k.shape}, got {v.shape}")
    if k.shape[0] != layers or k.shape[3] != head_dim:
        raise TraceError(f"{what}k: expected (layers={layers}, kv_heads, seq, head_dim={head_dim}), "
                         f"got {k.shape}")
    if kv_heads < 1 or heads % kv_heads:
        raise TraceError(f"{what}k: expected kv_heads dividing heads ({heads}), got {kv_heads}")
    if min(layers, seq_q, seq_k, head_dim) < 1:
        raise TraceError(f"{what}q: expected non-empty layers, seq and head_dim, "
                         f"got q {q.shape}, k {k.shape}")
    return layers, heads, seq_q, head_dim, kv_heads, seq_k


def _layer32(arr: np.ndarray, layer: int, name: str) -> np.ndarray:
    out = np.asarray(arr[layer], dtype=np.float32)
    if not np.isfinite(out).all():
        raise TraceError(f"{name}: expected finite values, found NaN or inf in layer {layer}")
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


def _dense_table(valid: np.ndarray, layers: list[int], heads: int, q_tile: int,
                 k_tile: int) -> dict[str, np.ndarray]:
    """The no-pruning chunk table of ``layers``: identical for every (layer, head), so counted once and tiled."""
    one = _concat_valid([_flat_counts(chunk_counts(valid[None], valid, q_tile, k_tile), 0, 0)])
    per_head = len(one["pairs_valid"])
    table = {key: np.tile(val, len(layers) * heads) for key, val in one.items()}
    lh = np.repeat(np.arange(len(layers) * heads, dtype=np.int64), per_head)
    table["layer"], table["head"] = np.asarray(layers, dtype=np.int64)[lh // heads], lh % heads
    return table


def _check_args(scale: float, causal: bool, query_offset: int, seq_q: int, seq_k: int, pruning: PruningSpec,
                q_tile: int, k_tile: int, seed: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not (
            math.isfinite(scale) and scale > 0):
        raise TraceError(f"scale: expected a finite softmax scale > 0, got {scale!r}")
    if isinstance(query_offset, bool) or not isinstance(query_offset, (int, np.integer)) or query_offset < 0:
        raise TraceError(f"query_offset: expected an integer >= 0, got {query_offset!r}")
    if causal and query_offset + seq_q > seq_k:
        raise TraceError(f"query_offset: expected query_offset + seq_q <= seq_k ({seq_k}) for a causal "
                         f"trace, got {query_offset} + {seq_q}")
    if not isinstance(pruning, PruningSpec):
        raise ConfigError(f"pruning: expected a PruningSpec, got {type(pruning).__name__}")
    for name, val in (("q_tile", q_tile), ("k_tile", k_tile)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ConfigError(f"{name}: expected a positive integer, got {val!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")


def run_functional(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float, causal: bool,
                   query_offset: int = 0, pruning: PruningSpec, q_tile: int, k_tile: int, seed: int = 0,
                   keep_output: bool = False, keep_masks: bool = False,
                   calibration: tuple[np.ndarray, np.ndarray] | None = None,
                   layers: Sequence[int] | None = None) -> FunctionalResult:
    """Prune and compute attention for every layer of a trace; see :class:`FunctionalResult`.

    ``layers`` (increasing indices) limits the pass to those layers of the trace; its tables, ``per_layer`` and
    ``tally`` then cover them only, under their own indices (a shard of one run: ``soc.shard``).

    q (layers, heads, seq_q, head_dim); k, v (layers, kv_heads, seq_k, head_dim). ``calibration`` is an
    optional (q, k) pair of another trace with the same heads and head_dim and at least as many layers: its
    approximate scores set the calibrated threshold references (its causal offset is seq_k - seq_q).
    """
    n_layers, heads, seq_q, head_dim, kv_heads, seq_k = _check_trace(q, k, v)
    chosen = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    if any(not 0 <= x < n_layers for x in chosen) or chosen != sorted(set(chosen)):
        raise ConfigError(f"layers: expected increasing layer indices in 0..{n_layers - 1}, got {layers!r}")
    _check_args(scale, causal, query_offset, seq_q, seq_k, pruning, q_tile, k_tile, seed)
    q_tile, k_tile, seed, query_offset = int(q_tile), int(k_tile), int(seed), int(query_offset)
    valid = valid_mask(seq_q, seq_k, causal, query_offset)
    cal_valid = None
    if calibration is not None:
        if not (isinstance(calibration, (tuple, list)) and len(calibration) == 2):
            raise TraceError("calibration: expected a (q, k) pair of arrays")
        cq, ck = calibration
        c_layers, c_heads, c_seq_q, c_dim, c_kv, c_seq_k = _check_trace(cq, ck, None, what="calibration ")
        if c_layers < n_layers or (c_heads, c_kv, c_dim) != (heads, kv_heads, head_dim):
            raise TraceError(f"calibration q: expected >= {n_layers} layers, {heads} heads, {kv_heads} kv "
                             f"heads, head_dim {head_dim}, got q {cq.shape}, k {ck.shape}")
        if causal and c_seq_q > c_seq_k:
            raise TraceError(f"calibration q: expected seq_q <= seq_k for a causal trace, "
                             f"got {cq.shape}, {ck.shape}")
        cal_valid = valid_mask(c_seq_q, c_seq_k, causal, c_seq_k - c_seq_q if causal else 0)

    slices = _head_slices(heads, seq_q, seq_k)
    tally = AccuracyTally()
    parts: list[dict[str, np.ndarray]] = []
    per_layer: list[dict] = []
    output = np.empty((len(chosen), heads, seq_q, head_dim), dtype=np.float32) if keep_output else None
    masks: list[np.ndarray] | None = [] if keep_masks else None

    for at, layer in enumerate(chosen):
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
            parts.append(_flat_counts(chunk_counts(keep, valid, q_tile, k_tile), layer, h0))
            if output is not None:
                output[at, h0:h1] = out_pruned
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
                            dense_chunks=_dense_table(valid, chosen, heads, q_tile, k_tile),
                            accuracy=tally.as_dict(), per_layer=per_layer, output=output, masks=masks,
                            tally=tally)
