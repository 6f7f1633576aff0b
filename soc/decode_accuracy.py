"""What pruning does to a real decode: the model re-run over prompt + continuation with the SoC's rule.

The captured continuation (greedy: the dense model's own tokens; teacher-forced: the text's) is fed to the model
twice, dense and with the simulator's keep masks in every layer, decided as the decode decided them: the same
MSB quantization and rule, the prompt's rows with the prefill pass's comparator references, each continuation
row on its own against its cache (a calibrated threshold recalibrated on that row, as its step was). A causal forward over the P + G tokens
computes exactly what the KV-cache decode computes, so the pruned model's predictions at positions P-1 ..
P+G-1 are the decode's next tokens: ``next_token_agreement`` is the share of them equal to the dense model's,
``perplexity_*`` the perplexity of the G continuation tokens under each model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from soc.attention.functional import run_functional
from soc.config.schema import SocConfig


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(targets)), targets]


def continuation_metrics(dense_logits: np.ndarray, pruned_logits: np.ndarray, ids: list[int],
                         prompt: int) -> dict[str, Any]:
    """Metrics of the continuation ids[prompt:] from (S, vocab) logits of both models."""
    ids_a = np.asarray(ids)
    pred = slice(prompt - 1, len(ids_a))  # predictions of every generated token and of the next one
    target = ids_a[prompt:]
    nll_d = _nll(dense_logits[prompt - 1:-1], target)
    nll_p = _nll(pruned_logits[prompt - 1:-1], target)
    agree = dense_logits[pred].argmax(-1) == pruned_logits[pred].argmax(-1)
    return {"metric": "continuation", "next_token_agreement": float(agree.mean()),
            "predictions": int(agree.size),
            "perplexity_dense": float(np.exp(nll_d.mean())), "perplexity_pruned": float(np.exp(nll_p.mean())),
            "perplexity_change": float(np.exp(nll_p.mean() - nll_d.mean()) - 1.0),
            "continuation_tokens": int(target.size)}


def decode_keep_fn(spec, prefill, prompt: int, scale: float, seed: int):
    """A (layer, q, k) -> mask hook over prompt + continuation that prunes as the decode did: the prompt's
    rows with the prefill pass's comparator references, each later row on its own against keys 0..row, as
    its step's functional pass did (a calibrated threshold is recalibrated on that row)."""
    from soc.attention.cim_layer import cim_scores
    from soc.attention.exact import valid_mask
    from soc.attention.pruning import prune_mask

    def keep_fn(layer: int, q: np.ndarray, k: np.ndarray) -> np.ndarray | None:
        rule = spec.for_layer(layer)
        if rule.rule == "none":
            return None
        heads, seq = q.shape[0], q.shape[1]
        valid = valid_mask(seq, seq, True, 0)
        approx = cim_scores(q, k, spec.quant, scale, seed=seed, layer=layer, layer_heads=heads,
                            kv_heads=k.shape[0]).scores
        keep = np.zeros((heads, seq, seq), dtype=bool)
        thr = prefill.per_layer[layer].get("thresholds") if rule.rule == "threshold" else None
        # a batched prefill holds copies of the sequence as extra heads: the first copy's references
        keep[:, :prompt, :prompt] = prune_mask(approx[:, :prompt, :prompt], valid[:prompt, :prompt], rule,
                                               None if thr is None else np.asarray(thr)[:heads], query_offset=0)
        for r in range(prompt, seq):
            keep[:, r:r + 1, :r + 1] = prune_mask(approx[:, r:r + 1, :r + 1], valid[r:r + 1, :r + 1], rule,
                                                  None, query_offset=r)
        return keep
    return keep_fn


def decode_model_accuracy(trace, layout, cfg: SocConfig, prefill=None) -> dict[str, Any] | None:
    """None for synthetic traces; a ``skipped`` note when the model or the prompt queries are missing.
    ``prefill``: the functional result of the decode's prefill (its comparator references); recomputed when
    not given. The analog noise is drawn for the whole sequence at once, so it is not the steps' draw."""
    meta = trace.meta
    if meta.source != "capture":
        return None
    from soc.models import INSTALL_HINT, load_model, model_available
    from soc.simulate import pruning_spec

    if not model_available(meta.model):
        return {"skipped": f"model {meta.model} is not installed ({INSTALL_HINT})"}
    if not layout.prefill_rows:
        return {"skipped": "the trace holds no prompt queries, so the pruned prefill cannot be replayed"}
    ids = meta.extra.get("token_ids")
    if not isinstance(ids, list) or len(ids) != meta.seq_len:
        return {"skipped": f"meta.token_ids: expected {meta.seq_len} token ids"}
    spec = pruning_spec(cfg)
    P = layout.prompt
    if prefill is None:
        prefill = run_functional(trace.q[:, :, :P], trace.k[:, :, :P], trace.v[:, :, :P], scale=meta.scale,
                                 causal=True, query_offset=0, pruning=spec, q_tile=cfg.dataflow.q_tile_rows,
                                 k_tile=cfg.cim.key_tile(meta.head_dim), seed=cfg.seed)
    model = load_model(meta.model)
    dense = model.forward(list(ids))
    pruned = model.forward(list(ids), decode_keep_fn(spec, prefill, P, meta.scale, cfg.seed))
    out = continuation_metrics(dense.task_output(), pruned.task_output(), list(ids), P)
    out["kept_fraction"] = pruned.stats.kept_fraction
    out["model"] = meta.model
    return out
