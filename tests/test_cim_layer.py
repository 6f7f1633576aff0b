"""One "prune a layer as the CIM does" (soc.attention.cim_layer.prune_layer) behind the functional pass, the
model-accuracy re-run and `soc calibrate`: all three must prune alike."""

from __future__ import annotations

import numpy as np
import pytest
from test_functional import make_trace

from soc.attention.cim_layer import cim_scores, prune_layer
from soc.attention.exact import expand_kv, valid_mask
from soc.attention.functional import run_functional
from soc.attention.pruning import prune_mask
from soc.attention.spec import CimQuantSpec, LayerRule, PruningSpec
from soc.faces.calibrate import _layer_stats
from soc.model_accuracy import keep_fn_for

QUANT = CimQuantSpec(noise_sigma_lsb=0.6)


@pytest.mark.parametrize("rule", [LayerRule("threshold", target_kept_fraction=0.3),
                                  LayerRule("margin", margin=1.0, keep_sink_tokens=1),
                                  LayerRule("topk", topk_keys=4)])
def test_model_accuracy_hook_prunes_like_the_functional_pass(rule):
    q, k, v = make_trace(seed=11)
    spec = PruningSpec(rule, quant=QUANT)
    scale = q.shape[-1] ** -0.5
    func = run_functional(q, k, v, scale=scale, causal=True, pruning=spec, q_tile=8, k_tile=16, seed=4,
                          keep_masks=True)
    hook = keep_fn_for(spec, func, scale=scale, causal=True, seed=4)
    for layer in range(q.shape[0]):
        ql, kl = q[layer].astype(np.float32), k[layer].astype(np.float32)
        np.testing.assert_array_equal(hook(layer, ql, kl), func.masks[layer])


def test_calibration_measures_the_masks_of_a_margin_run():
    q, k, v = make_trace(seed=12, layers=2)
    scale = q.shape[-1] ** -0.5
    valid = valid_mask(q.shape[2], k.shape[2], True)
    spec = PruningSpec(LayerRule("margin", margin=1.25), quant=QUANT)
    func = run_functional(q, k, v, scale=scale, causal=True, pruning=spec, q_tile=8, k_tile=16, seed=2)
    for layer in range(2):
        measure = _layer_stats(*(a[layer].astype(np.float32) for a in (q, k, v)), spec=spec, scale=scale,
                               valid=valid, seed=2, layer=layer, query_offset=0)
        got = measure(1.25)
        want = func.per_layer[layer]
        assert got["kept_fraction"] == want["kept_pairs"] / want["valid_pairs"]
        assert got["mass_kept"] == pytest.approx(want["mass_kept"], rel=1e-6)


def test_prune_layer_is_quantise_then_rule_and_reuses_given_scores():
    q, k, _ = make_trace(seed=13, layers=1)
    ql, kl = q[0].astype(np.float32), expand_kv(k[0].astype(np.float32), q.shape[1])
    valid = valid_mask(ql.shape[1], kl.shape[1], True)
    rule = LayerRule("threshold", target_kept_fraction=0.4)
    scores = cim_scores(ql, kl, QUANT, 0.25, seed=1, layer=3)
    out = prune_layer(ql, kl, valid, rule, quant=QUANT, scale=0.25, seed=1, layer=3)
    np.testing.assert_array_equal(out.keep, prune_mask(scores.scores, valid, rule, out.thresholds))
    assert out.keep[:, ~valid].sum() == 0
    # the calibrated references keep the target fraction of valid pairs (up to ties)
    assert out.keep.sum() / (valid.sum() * ql.shape[0]) == pytest.approx(0.4, abs=0.01)
    # heads 1.. of the same layer, pruned alone, draw the same noise as in the whole layer
    part = prune_layer(ql[1:], kl[1:], valid, rule, quant=QUANT, scale=0.25, seed=1, layer=3, first_head=1,
                       thresholds=out.thresholds[1:])
    np.testing.assert_array_equal(part.keep, out.keep[1:])
    again = prune_layer(ql, kl, valid, LayerRule("margin", margin=0.5), quant=QUANT, scale=0.25, seed=9,
                        layer=0, scores=scores)  # scores given: seed and layer no longer matter
    np.testing.assert_array_equal(again.keep, prune_mask(scores.scores, valid, LayerRule("margin", margin=0.5)))
