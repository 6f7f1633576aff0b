"""Pruning rules, threshold calibration, accuracy metrics and the spec's validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from soc.attention.exact import attention, valid_mask
from soc.attention.metrics import AccuracyTally
from soc.attention.pruning import calibrate_thresholds, prune_mask, quantile_threshold
from soc.attention.spec import CimQuantSpec, LayerRule, PruningSpec, SpecError
from soc.errors import ConfigError

# One head, 3 queries x 4 keys, causal with offset 1: row i sees keys 0..i+1.
S = np.array([[[1.0, 3.0, 9.0, 0.0],
               [2.0, 2.5, 0.5, 7.0],
               [4.0, 4.0, 1.0, 4.0]]], dtype=np.float32)
VALID = valid_mask(3, 4, True, 1)


def test_rule_none_keeps_exactly_the_valid_pairs():
    np.testing.assert_array_equal(prune_mask(S, VALID, LayerRule("none"))[0], VALID)


def test_threshold_rule_by_hand():
    keep = prune_mask(S, VALID, LayerRule("threshold", threshold=2.5))[0]
    np.testing.assert_array_equal(keep, [[0, 1, 0, 0],       # 9.0 is in row 0's future: never kept
                                         [0, 1, 0, 0],
                                         [1, 1, 0, 1]])
    per_head = np.concatenate([S, S - 10])
    keep2 = prune_mask(per_head, VALID, LayerRule("threshold", threshold_per_head=(2.5, -7.5)))
    np.testing.assert_array_equal(keep2[0], keep2[1])
    with pytest.raises(SpecError, match="threshold_per_head: expected 2 values"):
        prune_mask(per_head, VALID, LayerRule("threshold", threshold_per_head=(1.0, 2.0, 3.0)))


def test_margin_rule_by_hand():
    keep = prune_mask(S, VALID, LayerRule("margin", margin=1.0))[0]
    # row maxima over valid keys: 3.0, 2.5, 4.0 -> keep s >= 2.0, 1.5, 3.0
    np.testing.assert_array_equal(keep, [[0, 1, 0, 0],
                                         [1, 1, 0, 0],
                                         [1, 1, 0, 1]])
    assert prune_mask(S, VALID, LayerRule("margin", margin=0.0))[0].sum(axis=1).tolist() == [1, 1, 3]


def test_topk_rule_by_hand_keeps_exactly_k_and_breaks_ties_to_the_earlier_key():
    keep = prune_mask(S, VALID, LayerRule("topk", topk_keys=2))[0]
    np.testing.assert_array_equal(keep, [[1, 1, 0, 0],
                                         [1, 1, 0, 0],
                                         [1, 1, 0, 0]])       # row 2: three keys tie at 4.0, first two win
    # fraction: ceil(f * valid keys), at least 1 -> rows see 2, 3, 4 keys; f = 0.4 -> k = 1, 2, 2
    keep = prune_mask(S, VALID, LayerRule("topk", target_kept_fraction=0.4))[0]
    np.testing.assert_array_equal(keep, [[0, 1, 0, 0],
                                         [1, 1, 0, 0],
                                         [1, 1, 0, 0]])


def brute_topk(approx, valid, k_of_row):
    keep = np.zeros(approx.shape, dtype=bool)
    for h in range(approx.shape[0]):
        for i in range(approx.shape[1]):
            cols = [j for j in range(approx.shape[2]) if valid[i, j]]
            cols.sort(key=lambda j: (-approx[h, i, j], j))
            for j in cols[:k_of_row(len(cols))]:
                keep[h, i, j] = True
    return keep


@pytest.mark.parametrize("causal", [False, True])
def test_topk_matches_brute_force_with_many_ties(causal):
    rng = np.random.default_rng(5)
    approx = rng.integers(-3, 4, size=(3, 9, 11)).astype(np.float32)   # integer scores: ties everywhere
    valid = valid_mask(9, 11, causal, 2)
    for rule, k_of_row in ((LayerRule("topk", topk_keys=4), lambda n: min(4, n)),
                           (LayerRule("topk", target_kept_fraction=0.3),
                            lambda n: max(1, math.ceil(0.3 * n)))):
        np.testing.assert_array_equal(prune_mask(approx, valid, rule), brute_topk(approx, valid, k_of_row))


def test_calibrated_threshold_hits_the_target_fraction():
    rng = np.random.default_rng(11)
    approx = rng.standard_normal((4, 64, 64)).astype(np.float32) * np.array([1, 2, 3, 4])[:, None, None]
    valid = valid_mask(64, 64, True, 0)
    for target in (0.1, 0.25, 0.5, 0.9):
        thr = calibrate_thresholds(approx, valid, target, "head")
        kept = prune_mask(approx, valid, LayerRule("threshold", target_kept_fraction=target), thr)
        per_head = kept.sum(axis=(1, 2)) / valid.sum()
        np.testing.assert_allclose(per_head, target, atol=0.005)
        thr_layer = calibrate_thresholds(approx, valid, target, "layer")
        assert np.all(thr_layer == thr_layer[0])
        kept = prune_mask(approx, valid, LayerRule("threshold", target_kept_fraction=target), thr_layer)
        assert kept.sum() / (4 * valid.sum()) == pytest.approx(target, abs=0.005)
        # one shared reference: the wide head keeps more than the narrow one at small targets
        if target < 0.5:
            assert kept[3].sum() > kept[0].sum()


def test_forced_sink_and_recent_keys_count_in_the_calibrated_target():
    rng = np.random.default_rng(12)
    approx = rng.standard_normal((3, 96, 96)).astype(np.float32)
    valid = valid_mask(96, 96, True, 0)
    rule = LayerRule("threshold", target_kept_fraction=0.25, keep_sink_tokens=4, keep_recent_tokens=8)
    kept = prune_mask(approx, valid, rule)                 # calibrated on these scores, forced keys included
    np.testing.assert_allclose(kept.sum(axis=(1, 2)) / valid.sum(), 0.25, atol=0.005)
    forced = (np.arange(96)[None, :] < 4) | ((np.arange(96)[:, None] - np.arange(96)[None, :]) % 96 < 8)
    assert np.all(kept[:, valid & forced])                  # every forced pair survives
    # forced pairs alone above the target: the comparator keeps nothing else
    heavy = LayerRule("threshold", target_kept_fraction=0.05, keep_sink_tokens=8, keep_recent_tokens=8)
    np.testing.assert_array_equal(prune_mask(approx, valid, heavy)[0], valid & forced_of(heavy, valid))


def forced_of(rule, valid):
    from soc.attention.pruning import forced_keys

    return forced_keys(valid, rule)


def test_calibration_with_ties_is_as_close_as_any_threshold_can_be():
    rng = np.random.default_rng(2)
    vals = rng.integers(-6, 7, size=(5, 400)).astype(np.float32)      # 13 distinct values: heavy ties
    for target in (0.07, 0.25, 0.5, 0.77):
        want = round(target * 400)
        thr = quantile_threshold(vals, target)
        for row in range(5):
            achieved = abs(int((vals[row] >= thr[row]).sum()) - want)
            best = min(abs(int((vals[row] >= t).sum()) - want) for t in np.unique(vals[row]))
            assert achieved == best


def peaked_layer(rng, heads=4, seq=96, dim=32):
    """Queries aimed at two keys each plus a sink key 0: the top key holds ~60% of the mass, as in models."""
    k = rng.standard_normal((heads, seq, dim)).astype(np.float32)
    k[:, 0] *= 2.0
    targets = rng.integers(0, seq, size=(heads, seq, 2))
    aimed = np.take_along_axis(k, targets[..., :1], axis=1) + np.take_along_axis(k, targets[..., 1:], axis=1)
    q = 0.3 * aimed + 0.2 * k[:, :1] + rng.standard_normal((heads, seq, dim))
    return q.astype(np.float32), k


def test_margin_prunes_more_with_smaller_margin_on_peaked_scores():
    rng = np.random.default_rng(3)
    q, k = peaked_layer(rng)
    scale = q.shape[-1] ** -0.5
    from soc.attention.approx import approx_scores
    approx = approx_scores(q, k, CimQuantSpec(), scale).scores
    valid = valid_mask(q.shape[1], k.shape[1], True, 0)
    fractions = [prune_mask(approx, valid, LayerRule("margin", margin=m)).sum() / (4 * valid.sum())
                 for m in (0.5, 1.0, 2.0, 4.0, 8.0, 1e6)]
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[-1] == 1.0
    assert fractions[2] < 0.5, "on peaked attention a 2-logit margin prunes most keys"


def test_accuracy_tally_against_hand_calculation():
    rng = np.random.default_rng(9)
    q, k = peaked_layer(rng, heads=2, seq=12, dim=8)
    v = rng.standard_normal(k.shape).astype(np.float32)
    valid = valid_mask(12, 12, True, 0)
    keep = (rng.random((2, 12, 12)) < 0.4) & valid
    keep[0, 5] = False                                  # one empty row
    exact_out, exact_p = attention(q, k, v, 0.3, True)
    pruned_out, _ = attention(q, k, v, 0.3, True, keep=keep)
    logits = np.einsum("hqd,hkd->hqk", q, k) * 0.3
    tally = AccuracyTally()
    tally.add_layer(0, valid=valid, keep=keep[:1], logits=logits[:1], probs_exact=exact_p[:1],
                    out_exact=exact_out[:1], out_pruned=pruned_out[:1])
    tally.add_layer(0, valid=valid, keep=keep[1:], logits=logits[1:], probs_exact=exact_p[1:],
                    out_exact=exact_out[1:], out_pruned=pruned_out[1:])
    got = tally.as_dict()
    mass, top1, empty = [], 0, 0
    for h in range(2):
        for i in range(12):
            cols = [j for j in range(12) if valid[i, j]]
            mass.append(sum(exact_p[h, i, j] for j in cols if keep[h, i, j]))
            best = max(cols, key=lambda j: logits[h, i, j])
            kept = [j for j in cols if keep[h, i, j]]
            empty += not kept
            top1 += bool(kept) and max(kept, key=lambda j: logits[h, i, j]) == best
    assert got["kept_fraction"] == pytest.approx(keep.sum() / (2 * valid.sum()))
    assert got["mass_kept"] == pytest.approx(np.mean(mass), rel=1e-6)
    assert got["top1_agreement"] == pytest.approx(top1 / 24)
    assert got["empty_rows"] == empty >= 1
    exact64 = exact_out.astype(np.float64)
    ref_err = np.linalg.norm(pruned_out - exact64) / np.linalg.norm(exact64)
    assert got["output_rel_err"] == pytest.approx(ref_err, rel=1e-6)
    assert tally.per_layer()[0]["layer"] == 0 and tally.per_layer()[0]["query_rows"] == 24


def test_spec_validation_names_the_field():
    with pytest.raises(SpecError, match=r"query_bits: expected an integer in \[1, 8\], got 12"):
        CimQuantSpec(query_bits=12)
    with pytest.raises(ValueError, match="key_bits: expected at most full_bits"):
        CimQuantSpec(key_bits=6, full_bits=4)
    with pytest.raises(ConfigError, match="noise_sigma_lsb"):
        CimQuantSpec(noise_sigma_lsb=-1.0)
    with pytest.raises(SpecError, match="rule: expected one of"):
        LayerRule("random")
    with pytest.raises(SpecError, match="margin: rule 'margin' needs"):
        LayerRule("margin")
    with pytest.raises(SpecError, match="target_kept_fraction"):
        LayerRule("threshold", target_kept_fraction=1.5)
    with pytest.raises(SpecError, match="topk_keys"):
        LayerRule("topk")
    with pytest.raises(SpecError, match="granularity"):
        LayerRule("threshold", target_kept_fraction=0.3, granularity="chip")
    with pytest.raises(SpecError, match="layer 1 is given twice"):
        PruningSpec(LayerRule("none"), per_layer=((1, LayerRule("none")), (1, LayerRule("none"))))


def test_pruning_spec_for_layer_and_threshold_precedence():
    margin = LayerRule("margin", margin=3.0)
    spec = PruningSpec(LayerRule("threshold", target_kept_fraction=0.25), per_layer=((2, margin),))
    assert spec.for_layer(2) is margin and spec.for_layer(0).rule == "threshold"
    # a fixed reference wins over the (always present) target fraction, as the config documents
    rule = LayerRule("threshold", target_kept_fraction=0.25, threshold=1.0)
    assert rule.threshold_source == "fixed"
    listed = LayerRule("threshold", target_kept_fraction=0.25, threshold_per_head=[1, 2])
    assert listed.threshold_per_head == (1.0, 2.0)


def test_sink_and_recent_tokens_survive_whatever_their_scores():
    from soc.attention.exact import valid_mask
    from soc.attention.pruning import prune_mask
    from soc.attention.spec import LayerRule

    valid = valid_mask(3, 5, causal=True, query_offset=2)  # rows sit at positions 2, 3, 4
    approx = np.full((1, 3, 5), -100.0, dtype=np.float32)  # below any reference: the comparator keeps nothing
    rule = LayerRule("threshold", threshold=0.0, keep_sink_tokens=1, keep_recent_tokens=2)
    keep = prune_mask(approx, valid, rule, query_offset=2)[0]
    expect = np.array([[1, 1, 1, 0, 0],    # sink 0, recent 1..2
                       [1, 0, 1, 1, 0],    # sink 0, recent 2..3
                       [1, 0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(keep, expect)
    none_forced = prune_mask(approx, valid, LayerRule("threshold", threshold=0.0), query_offset=2)
    assert not none_forced.any()


def test_keeping_the_own_token_leaves_no_row_empty():
    from soc.attention.functional import run_functional
    from soc.attention.spec import LayerRule, PruningSpec

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 16, 8)).astype(np.float32) for _ in range(3))
    common = dict(scale=8 ** -0.5, causal=True, query_offset=0, q_tile=4, k_tile=8, seed=0)
    harsh = run_functional(q, k, v, pruning=PruningSpec(LayerRule("threshold", threshold=50.0)), **common)
    guarded = run_functional(q, k, v, pruning=PruningSpec(LayerRule("threshold", threshold=50.0,
                                                                    keep_recent_tokens=1)), **common)
    assert harsh.accuracy["empty_rows"] == 2 * 16
    assert guarded.accuracy["empty_rows"] == 0
    assert guarded.accuracy["kept_pairs"] == 2 * 16  # exactly the diagonal
