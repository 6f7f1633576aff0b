"""The functional pass over a whole trace: approximate scores, pruning masks, exact pruned attention, accuracy
and the per-chunk counts that drive the timing model, all from the same masks.

Each layer is processed with all its heads vectorized; a layer whose score matrices exceed
:data:`MAX_LAYER_ELEMENTS` is processed one head at a time to bound memory. Analog noise for (layer, head) is
drawn from its own generator ``default_rng([seed, stream, layer, head])`` (stream 0: the replayed trace,
1: the calibration trace), so results are deterministic and do not depend on how heads are batched.
With zero noise no random number is drawn, so the seed has no effect.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from soc import progress
from soc.attention.cim_layer import cim_scores, head_rngs, prune_layer
from soc.attention.exact import AttentionWork, Scratch, kv_for_heads, row_blocks, valid_mask
from soc.attention.metrics import AccuracyTally
from soc.attention.plan import survivor_tables
from soc.attention.pruning import calibrate_thresholds, fixed_thresholds, forced_keys, quantile_threshold
from soc.attention.spec import LayerRule, PruningSpec
from soc.attention.table import CHUNK_INDEX_KEYS, ChunkTable, repeat_groups
from soc.errors import ConfigError, TraceError

#: Above this many score elements per layer (heads * seq_q * seq_k), heads are processed one at a time.
MAX_LAYER_ELEMENTS = 2 ** 24
#: Layer-granularity calibration over head-by-head layers uses at most this many (evenly strided) samples.
CALIBRATION_SAMPLE_CAP = 2 ** 24

#: Per-layer survivor arrays (soc.attention.plan.survivor_tables), stacked over layers in FunctionalResult.
SURVIVOR_KEYS = ("key_used", "row_kept", "row_shared", "prev_total")

__all__ = ["CHUNK_INDEX_KEYS", "SURVIVOR_KEYS", "FunctionalResult", "run_functional", "MAX_LAYER_ELEMENTS"]

_head_rngs = head_rngs  # the name the faces used before soc.attention.cim_layer existed


@dataclass
class FunctionalResult:
    """What the functional pass hands to the timing model and the report.

    ``chunks`` holds flat int32 arrays in (layer, head, qtile, ktile) order under
    :data:`CHUNK_INDEX_KEYS` + :data:`~soc.attention.plan.COUNT_KEYS`; chunks with no valid pair are dropped;
    ``kv_head`` is the KV head a query head reads (GQA: ``head // group``). The no-pruning counterfactual
    (keep = valid) is the same for every (layer, KV head): ``dense_group`` is one KV group's table (its
    ``group`` query heads in sequence, layer = kv_head = 0), ``dense_chunks`` repeats it for the whole trace on
    demand, row-aligned with ``chunks`` (it is not kept: build it once where it is needed, or scale per-group
    sums by ``dense_repeats``). ``survivors`` holds the per-query survivor arrays of :data:`SURVIVOR_KEYS` with
    a leading layer axis (for the row and cache dataflows); ``valid`` the (seq_q, seq_k) validity.
    """

    chunks: dict[str, np.ndarray]
    dense_group: dict[str, np.ndarray]
    layers: int
    heads: int
    accuracy: dict
    per_layer: list[dict]
    output: np.ndarray | None = None
    masks: list[np.ndarray] | None = None
    survivors: dict[str, np.ndarray] | None = None
    valid: np.ndarray | None = None
    group: int = 1
    tally: AccuracyTally | None = None  # the accuracy counters per layer (merging passes over disjoint layers)
    layer_ids: tuple[int, ...] | None = None  # the trace's layers this result covers (None: 0..layers-1)

    @property
    def dense_repeats(self) -> int:
        """How many (layer, KV head) copies of ``dense_group`` make the dense counterfactual."""
        return self.layers * self.heads // self.group

    @property
    def dense_chunks(self) -> dict[str, np.ndarray]:
        """The whole no-pruning chunk table (built anew at each access)."""
        table = repeat_groups(self.dense_group, self.layers, self.heads // self.group)
        if self.layer_ids is not None:
            table["layer"] = np.asarray(self.layer_ids, dtype=table["layer"].dtype)[table["layer"]]
        return table


def _head_slices(heads: int, seq_q: int, seq_k: int, group: int = 1) -> list[tuple[int, int]]:
    """Slices of whole GQA groups (what a KV head shares is counted within one slice)."""
    if heads * seq_q * seq_k <= MAX_LAYER_ELEMENTS:
        return [(0, heads)]
    return [(h, h + group) for h in range(0, heads, group)]


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
    """Layer ``layer`` of a trace array, checked finite. float16 and float32 stay as stored (a view of a mapped
    trace: each head slice is cast to float32 where it is used, so a layer's float32 copy never exists);
    other dtypes are cast to float32 here."""
    out = np.asarray(arr[layer])
    if out.dtype not in (np.float16, np.float32):
        out = out.astype(np.float32)
    if not np.isfinite(out).all():
        raise TraceError(f"{name}: expected finite values, found NaN or inf in layer {layer}")
    return out


def release_layer(arr: np.ndarray, layer: int) -> None:
    """Give back the mapped pages of ``arr[layer]`` once the pass is done with that layer (a memory-mapped trace
    array; anything else is left alone). The pages stay in the kernel's page cache and are read again if touched,
    but no longer count in this process's RSS: without this a whole-model replay's RSS grows by the trace's
    size, a layer at a time."""
    mm = getattr(arr, "_mmap", None)
    if not isinstance(arr, np.memmap) or not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") \
            or arr.ndim < 1 or not arr.flags.c_contiguous:
        return
    begin = arr.offset % mmap.ALLOCATIONGRANULARITY + layer * arr.strides[0]  # where np.memmap put the data
    start = begin - begin % mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(mmap.MADV_DONTNEED, start, min(begin + arr.strides[0], len(mm)) - start)


def _calibrate(rule: LayerRule, q_l: np.ndarray, k_l: np.ndarray, valid: np.ndarray, pruning: PruningSpec,
               scale: float, seed: int, stream: int, layer: int, scratch: Scratch | None = None) -> np.ndarray:
    """Calibrated thresholds (H,) of one layer from the approximate scores of (q_l, k_l)."""
    heads, seq_q, _ = q_l.shape
    frac = float(rule.target_kept_fraction)
    slices = _head_slices(heads, seq_q, k_l.shape[1])
    thr = np.empty(heads)
    samples = []
    stride = max(1, math.ceil(heads * int(np.count_nonzero(valid)) / CALIBRATION_SAMPLE_CAP))
    for h0, h1 in slices:
        approx = cim_scores(q_l[h0:h1], kv_for_heads(k_l, h0, h1, heads), pruning.quant, scale, seed=seed,
                            layer=layer, first_head=h0, stream=stream, layer_heads=heads,
                            kv_heads=k_l.shape[0], blocks=row_blocks(valid), scratch=scratch).scores
        if rule.granularity == "head" or len(slices) == 1:
            thr[h0:h1] = calibrate_thresholds(approx, valid, frac, rule.granularity, forced_keys(valid, rule),
                                              scratch=scratch)
        else:
            samples.append(approx[:, valid].ravel()[::stride])
    if samples:
        thr[:] = quantile_threshold(np.concatenate(samples)[None, :], frac)[0]
    return thr


def _layer_thresholds(rule: LayerRule, layer: int, q_l: np.ndarray, k_l: np.ndarray, valid: np.ndarray,
                      calibration: tuple | None, cal_valid: np.ndarray | None, pruning: PruningSpec,
                      scale: float, seed: int, inline_ok: bool, info: dict,
                      scratch: Scratch | None = None) -> tuple[np.ndarray | None, bool]:
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
        return _calibrate(rule, cq, ck, cal_valid, pruning, scale, seed, 1, layer, scratch), False
    info["calibrated_on"] = "replayed trace"
    if inline_ok or rule.granularity == "head":
        return np.empty(heads), True
    return _calibrate(rule, q_l, k_l, valid, pruning, scale, seed, 0, layer, scratch), False


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
                   keep_output: bool = False, keep_masks: bool = False, survivors: bool = False,
                   calibration: tuple[np.ndarray, np.ndarray] | None = None,
                   layers: Sequence[int] | None = None) -> FunctionalResult:
    """Prune and compute attention for every layer of a trace; see :class:`FunctionalResult`.

    ``layers`` (increasing indices) limits the pass to those layers of the trace; its tables, ``per_layer`` and
    ``tally`` then cover them only, under their own indices (a shard of one run: ``soc.shard``).

    q (layers, heads, seq_q, head_dim); k, v (layers, kv_heads, seq_k, head_dim). ``calibration`` is an
    optional (q, k) pair of another trace with the same heads and head_dim and at least as many layers: its
    approximate scores set the calibrated threshold references (its causal offset is seq_k - seq_q).
    ``survivors``: also keep the per-query survivor arrays the row and cache dataflows need (about
    layers x heads x seq_q x key tiles x 8 bytes).
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

    group = heads // kv_heads
    slices = _head_slices(heads, seq_q, seq_k, group)
    tally = AccuracyTally()
    table = ChunkTable(valid, len(chosen), heads, q_tile, k_tile, group, layer_ids=chosen)
    surv: list[dict[str, np.ndarray]] = []
    per_layer: list[dict] = []
    output = np.empty((len(chosen), heads, seq_q, head_dim), dtype=np.float32) if keep_output else None
    masks: list[np.ndarray] | None = [] if keep_masks else None
    work = AttentionWork(valid)

    with progress.task("functional pass", total=len(chosen), unit="layer") as bar:
        for at, layer in enumerate(chosen):
            rule = pruning.for_layer(layer)
            q_l, k_l, v_l = (_layer32(arr, layer, name) for arr, name in ((q, "q"), (k, "k"), (v, "v")))
            info = {"layer": layer, **rule.describe()}
            thresholds, inline = _layer_thresholds(rule, layer, q_l, k_l, valid, calibration, cal_valid,
                                                   pruning, scale, seed, len(slices) == 1, info, work.scratch)
            score_lsb = np.empty(heads)
            layer_mask = np.empty((heads, seq_q, seq_k), dtype=bool) if keep_masks else None

            for h0, h1 in slices:  # float32 once per slice, for the scores and the attention alike
                q_h = np.asarray(q_l[h0:h1], np.float32)
                k_h, v_h = (np.asarray(kv_for_heads(x, h0, h1, heads), np.float32) for x in (k_l, v_l))
                if rule.rule == "none":
                    keep = None
                else:
                    given = None if thresholds is None or inline else thresholds[h0:h1]
                    pruned = prune_layer(q_h, k_h, valid, rule, quant=pruning.quant, scale=scale,
                                         seed=seed, layer=layer, first_head=h0, thresholds=given,
                                         query_offset=query_offset, layer_heads=heads, kv_heads=kv_heads,
                                         scratch=work.scratch)
                    keep, score_lsb[h0:h1] = pruned.keep, pruned.score_lsb
                    if inline:
                        thresholds[h0:h1] = pruned.thresholds
                att = work.attend(q_h, k_h, v_h, scale, keep)
                if keep is None:
                    keep = work.dense_keep(h1 - h0)
                    table.put_dense(at, h0, h1 - h0)
                else:
                    table.put(at, h0, keep)
                if survivors:
                    surv.append(survivor_tables(keep, valid, q_tile, k_tile, group))
                tally.add_layer(layer, valid=valid, keep=keep, logits=None, probs_exact=None,
                                out_exact=att.out_exact, out_pruned=att.out_pruned, exact_arg=att.exact_arg,
                                mass_kept=att.mass_kept)
                if output is not None:
                    output[at, h0:h1] = att.out_pruned
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
            for arr in (q, k, v, *(calibration or ())):
                release_layer(arr, layer)
            bar.advance()

    for info, summary in zip(per_layer, tally.per_layer()):
        info.update({key: val for key, val in summary.items() if key != "layer"})
    per_slice = len(slices)
    tables = {key: np.stack([np.concatenate([s[key] for s in surv[i:i + per_slice]])
                             for i in range(0, len(surv), per_slice)]) for key in SURVIVOR_KEYS} if surv else None
    return FunctionalResult(chunks=table.flat(), dense_group=table.dense_group, layers=len(chosen), heads=heads,
                            accuracy=tally.as_dict(), per_layer=per_layer, output=output, masks=masks,
                            survivors=tables, valid=valid, group=group, tally=tally,
                            layer_ids=None if layers is None else tuple(chosen))
