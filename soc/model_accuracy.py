"""Task-level accuracy under pruning: re-run the real model that produced a trace with the simulator's rule.

The trace holds what the dense model computed; once layer 1 is pruned, layer 2 sees slightly different Q and K.
So the model is re-run with a hook that applies, in every layer, the same rule on the layer's own Q and K: the
same MSB quantization, the same analog noise streams, the same comparator references (calibrated thresholds are
taken from the functional pass), the same margin or top-k. The result goes to ``accuracy.model``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from soc.attention.cim_layer import prune_layer
from soc.attention.exact import valid_mask
from soc.attention.functional import FunctionalResult
from soc.attention.spec import PruningSpec


def keep_fn_for(spec: PruningSpec, func: FunctionalResult, *, scale: float, causal: bool, seed: int):
    """A (layer, q, k) -> mask hook that prunes like the functional pass did."""
    def keep_fn(layer: int, q: np.ndarray, k: np.ndarray) -> np.ndarray | None:
        rule = spec.for_layer(layer)
        if rule.rule == "none":
            return None
        valid = valid_mask(q.shape[1], k.shape[1], causal, k.shape[1] - q.shape[1])
        thresholds = func.per_layer[layer].get("thresholds") if rule.rule == "threshold" else None
        return prune_layer(q, k, valid, rule, quant=spec.quant, scale=scale, seed=seed, layer=layer,
                           thresholds=None if thresholds is None else np.asarray(thresholds),
                           layer_heads=q.shape[0], kv_heads=k.shape[0]).keep
    return keep_fn


def model_accuracy(trace, spec: PruningSpec, func: FunctionalResult, seed: int) -> dict[str, Any] | None:
    """Task metrics of the pruned model, or a note saying why none could be computed; None for synthetic traces."""
    meta = trace.meta
    if meta.source != "capture":
        return None
    from soc.models import INSTALL_HINT, evaluate_pruning, model_available

    if not model_available(meta.model):
        return {"skipped": f"model {meta.model} is not installed ({INSTALL_HINT})"}
    keep_fn = keep_fn_for(spec, func, scale=meta.scale, causal=meta.causal, seed=seed)
    out = evaluate_pruning(meta.to_dict(), keep_fn)
    out.pop("per_layer_kept_fraction", None)
    return out
