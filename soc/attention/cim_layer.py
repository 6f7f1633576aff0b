"""Prune one layer as the CIM does: quantise Q and K to their MSBs, score them on the analog array with its
readout noise, and compare the scores against the layer's rule. The functional pass, ``soc calibrate`` and the
model-accuracy re-run all go through :func:`prune_layer`, so the three cannot drift apart.

Analog noise for (layer, head) comes from its own generator ``default_rng([seed, stream, layer, head])``
(stream 0: the replayed trace, 1: a calibration trace): results do not depend on how heads are batched.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from soc.attention.approx import ApproxScores, approx_scores, head_cores
from soc.attention.exact import Scratch, row_blocks
from soc.attention.pruning import calibrate_thresholds, fixed_thresholds, forced_keys, prune_mask
from soc.attention.spec import CimQuantSpec, LayerRule


def head_rngs(seed: int, stream: int, layer: int, h0: int, h1: int) -> list[np.random.Generator]:
    """The analog noise generators of heads [h0, h1) of ``layer``."""
    return [np.random.default_rng([seed, stream, layer, h]) for h in range(h0, h1)]


def cim_scores(q: np.ndarray, k: np.ndarray, quant: CimQuantSpec, scale: float, *, seed: int, layer: int,
               first_head: int = 0, stream: int = 0, layer_heads: int | None = None,
               kv_heads: int | None = None, blocks=None, scratch: Scratch | None = None) -> ApproxScores:
    """The array's approximate logits of query heads [first_head, first_head + H) of ``layer``:
    q (H, Sq, D), k (H or KV, Sk, D) already matched to those heads. ``layer_heads`` and ``kv_heads`` (default:
    the H heads given, one KV head each) place each head on the CIM core whose fixed pattern it sees.
    ``blocks``: compute only those pairs (:func:`soc.attention.exact.row_blocks`; the others read -inf).
    ``scratch``: see :func:`~soc.attention.approx.approx_scores`."""
    heads = q.shape[0]
    layer_heads = layer_heads or first_head + heads
    cores = head_cores(layer, layer_heads, first_head, first_head + heads, quant.cores, kv_heads)
    return approx_scores(q, k, quant, scale, head_rngs=head_rngs(seed, stream, layer, first_head, first_head + heads),
                         cores=cores, blocks=blocks, scratch=scratch)


class PrunedLayer(NamedTuple):
    """A layer's keep mask (H, Sq, Sk), the comparator references it used (H,) or None (not a threshold
    rule), and the logit value of one integer unit of the score per head (H,)."""

    keep: np.ndarray
    thresholds: np.ndarray | None
    score_lsb: np.ndarray


def prune_layer(q: np.ndarray, k: np.ndarray, valid: np.ndarray, rule: LayerRule, *, quant: CimQuantSpec,
                scale: float, seed: int, layer: int, first_head: int = 0, thresholds: np.ndarray | None = None,
                query_offset: int | None = None, scores: ApproxScores | None = None,
                layer_heads: int | None = None, kv_heads: int | None = None,
                scratch: Scratch | None = None) -> PrunedLayer:
    """Which pairs of one layer (or of heads [first_head, first_head + H) of it) survive ``rule``.

    q (H, Sq, D), k (H or KV, Sk, D), valid (Sq, Sk). A calibrated threshold rule
    calibrates on the layer's own scores unless ``thresholds`` (H,) are given (e.g. from a calibration trace);
    ``scores`` reuses the array's scores of an earlier call on the same q and k (a calibration sweep).
    ``rule.rule == 'none'`` keeps every valid pair and scores nothing. A calibrated threshold counts the
    always-kept sink and recent keys in its target. ``layer_heads``/``kv_heads``: see :func:`cim_scores`.
    With a ``scratch`` (:class:`~soc.attention.exact.Scratch`) the scores and the mask live in its buffers and
    are valid until the next call with it.
    """
    heads = q.shape[0]
    if rule.rule == "none":
        return PrunedLayer(np.broadcast_to(valid, (heads, *valid.shape)).copy(), None, np.zeros(heads))
    if scores is None:
        blocks = row_blocks(valid) if valid.ndim == 2 else None
        scores = cim_scores(q, k, quant, scale, seed=seed, layer=layer, first_head=first_head,
                            layer_heads=layer_heads, kv_heads=kv_heads, blocks=blocks, scratch=scratch)
    approx, lsb = scores
    if rule.rule == "threshold" and thresholds is None:
        thresholds = fixed_thresholds(rule, heads)
        if thresholds is None:
            thresholds = calibrate_thresholds(approx, valid, float(rule.target_kept_fraction), rule.granularity,
                                              forced_keys(valid, rule, query_offset), scratch=scratch)
    keep = prune_mask(approx, valid, rule, thresholds if rule.rule == "threshold" else None,
                      query_offset=query_offset, scratch=scratch)
    return PrunedLayer(keep, thresholds if rule.rule == "threshold" else None, np.asarray(lsb))
