"""The whole-trace functional pass: exactness without pruning, consistency of masks, counts and accuracy,
determinism, head batching, calibration, and input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_attention_exact import reference_attention

from soc.attention import functional
from soc.attention.approx import approx_scores, msb_quantize
from soc.attention.exact import attention, valid_mask
from soc.attention.functional import run_functional
from soc.attention.plan import COUNT_KEYS
from soc.attention.pruning import prune_mask
from soc.attention.spec import CimQuantSpec, LayerRule, PruningSpec
from soc.errors import ConfigError, TraceError


def make_trace(seed=0, layers=3, heads=4, kv_heads=2, seq_q=40, seq_k=40, dim=16, dtype=np.float16):
    """A small trace with peaked attention: each query leans towards two keys and a sink key 0."""
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((layers, kv_heads, seq_k, dim))
    group = heads // kv_heads
    k_h = np.repeat(k, group, axis=1)
    targets = rng.integers(0, seq_k, size=(layers, heads, seq_q, 1))
    q = (0.4 * np.take_along_axis(k_h, targets, axis=2) + 0.2 * k_h[:, :, :1]
         + rng.standard_normal((layers, heads, seq_q, dim)))
    v = rng.standard_normal((layers, kv_heads, seq_k, dim))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def run(q, k, v, rule, *, causal=True, offset=0, noise=0.0, seed=0, per_layer=(), **kw):
    spec = PruningSpec(rule, per_layer=per_layer, quant=CimQuantSpec(noise_sigma_lsb=noise))
    return run_functional(q, k, v, scale=q.shape[-1] ** -0.5, causal=causal, query_offset=offset,
                          pruning=spec, q_tile=8, k_tile=16, seed=seed, keep_output=True, keep_masks=True,
                          **kw)


@pytest.mark.parametrize("heads,kv_heads,seq_q,seq_k,causal,offset", [
    (4, 4, 24, 24, False, 0), (4, 2, 24, 24, True, 0), (6, 2, 5, 19, True, 14)])
def test_no_pruning_equals_exact_attention(heads, kv_heads, seq_q, seq_k, causal, offset):
    q, k, v = make_trace(heads=heads, kv_heads=kv_heads, seq_q=seq_q, seq_k=seq_k, layers=2)
    res = run(q, k, v, LayerRule("none"), causal=causal, offset=offset)
    for layer in range(2):
        ref, _ = reference_attention(q[layer].astype(np.float64), k[layer].astype(np.float64),
                                     v[layer].astype(np.float64), q.shape[-1] ** -0.5, causal, offset)
        np.testing.assert_allclose(res.output[layer], ref, rtol=1e-5, atol=1e-5)
    assert res.output.dtype == np.float32 and res.output.shape == q.shape
    acc = res.accuracy
    assert acc["kept_fraction"] == 1.0 and acc["mass_kept"] == pytest.approx(1.0, abs=1e-6)
    assert acc["output_rel_err"] == 0.0 and acc["top1_agreement"] == 1.0 and acc["empty_rows"] == 0
    for key in functional.CHUNK_INDEX_KEYS + COUNT_KEYS:
        np.testing.assert_array_equal(res.chunks[key], res.dense_chunks[key], err_msg=key)


@pytest.mark.parametrize("rule", [LayerRule("threshold", target_kept_fraction=0.3),
                                  LayerRule("margin", margin=2.0),
                                  LayerRule("topk", target_kept_fraction=0.25)])
def test_masks_drive_output_counts_and_accuracy(rule):
    q, k, v = make_trace(seed=1)
    res = run(q, k, v, rule, noise=0.5, seed=3)
    valid = valid_mask(40, 40, True, 0)
    total_kept = 0
    for layer, mask in enumerate(res.masks):
        assert mask.shape == (4, 40, 40) and not (mask & ~valid).any()
        out, _ = attention(q[layer], k[layer], v[layer], q.shape[-1] ** -0.5, True, keep=mask)
        np.testing.assert_allclose(res.output[layer], out, rtol=1e-5, atol=1e-6)
        assert res.per_layer[layer]["kept_fraction"] == pytest.approx(mask.sum() / (4 * valid.sum()))
        layer_rows = res.chunks["layer"] == layer
        assert res.chunks["pairs_kept"][layer_rows].sum() == mask.sum()
        total_kept += mask.sum()
    assert res.accuracy["kept_fraction"] == pytest.approx(total_kept / (3 * 4 * valid.sum()))
    assert res.chunks["pairs_kept"].sum() == total_kept
    assert 0 < res.accuracy["mass_kept"] < 1 and 0 < res.accuracy["output_rel_err"] < 1
    json.dumps({"accuracy": res.accuracy, "per_layer": res.per_layer}, allow_nan=False)  # report-ready
    lsb = [msb_quantize(q[0, h], 4, 8)[1] * msb_quantize(k[0, h // 2], 4, 8)[1] * q.shape[-1] ** -0.5
           for h in range(4)]
    np.testing.assert_allclose(res.per_layer[0]["score_lsb"], lsb, rtol=1e-6)
    if rule.rule == "threshold":
        assert res.accuracy["kept_fraction"] == pytest.approx(0.3, abs=0.01)
        assert len(res.per_layer[0]["thresholds"]) == 4 and len(res.per_layer[0]["score_lsb"]) == 4
    if rule.rule != "threshold":
        assert res.accuracy["empty_rows"] == 0
        assert res.accuracy["top1_agreement"] > 0.9    # the 4-bit score keeps the true top key


def test_margin_masks_equal_the_rule_applied_to_approx_scores():
    q, k, v = make_trace(seed=2, kv_heads=4)
    rule = LayerRule("margin", margin=1.5)
    res = run(q, k, v, rule, causal=False)
    for layer in range(3):
        approx = approx_scores(q[layer], k[layer], CimQuantSpec(), q.shape[-1] ** -0.5).scores
        np.testing.assert_array_equal(res.masks[layer], prune_mask(approx, np.ones((40, 40), bool), rule))


def test_chunks_are_ordered_and_causal_chunks_dropped():
    q, k, v = make_trace(seq_q=48, seq_k=48)
    spec = PruningSpec(LayerRule("threshold", target_kept_fraction=0.25))
    res = run_functional(q, k, v, scale=0.25, causal=True, pruning=spec, q_tile=16, k_tile=16, seed=0)
    # 3 x 3 chunks per head, the 3 above the diagonal hold no valid pair
    assert len(res.chunks["layer"]) == 3 * 4 * 6 == len(res.dense_chunks["layer"])
    order = np.lexsort([res.chunks[key] for key in reversed(functional.CHUNK_INDEX_KEYS)])
    np.testing.assert_array_equal(order, np.arange(len(order)))
    assert np.all(res.chunks["ktile"] <= res.chunks["qtile"])
    np.testing.assert_array_equal(res.chunks["pairs_valid"], res.dense_chunks["pairs_valid"])
    np.testing.assert_array_equal(res.dense_chunks["pairs_kept"], res.dense_chunks["pairs_valid"])
    assert res.output is None and res.masks is None


def test_determinism_and_seed_only_matters_with_noise():
    q, k, v = make_trace(seed=4)
    rule = LayerRule("threshold", target_kept_fraction=0.25)
    a, b = run(q, k, v, rule, noise=1.0, seed=5), run(q, k, v, rule, noise=1.0, seed=5)
    for ma, mb in zip(a.masks, b.masks):
        np.testing.assert_array_equal(ma, mb)
    assert a.accuracy == b.accuracy
    c = run(q, k, v, rule, noise=1.0, seed=6)
    assert any((ma != mc).any() for ma, mc in zip(a.masks, c.masks))
    d, e = run(q, k, v, rule, seed=5), run(q, k, v, rule, seed=6)
    for md, me in zip(d.masks, e.masks):
        np.testing.assert_array_equal(md, me)


@pytest.mark.parametrize("rule", [LayerRule("threshold", target_kept_fraction=0.3, granularity="layer"),
                                  LayerRule("threshold", target_kept_fraction=0.3),
                                  LayerRule("topk", topk_keys=5)])
def test_head_by_head_processing_gives_identical_results(monkeypatch, rule):
    q, k, v = make_trace(seed=6)
    whole = run(q, k, v, rule, noise=0.7, seed=1)
    monkeypatch.setattr(functional, "MAX_LAYER_ELEMENTS", 1)      # force the one-head-at-a-time path
    sliced = run(q, k, v, rule, noise=0.7, seed=1)
    for mw, ms in zip(whole.masks, sliced.masks):
        np.testing.assert_array_equal(mw, ms)
    np.testing.assert_array_equal(whole.output, sliced.output)
    for key in whole.chunks:
        np.testing.assert_array_equal(whole.chunks[key], sliced.chunks[key])
    for key, val in whole.accuracy.items():
        assert sliced.accuracy[key] == pytest.approx(val, rel=1e-9)


def test_calibration_trace_sets_the_thresholds():
    q, k, v = make_trace(seed=7)
    rule = LayerRule("threshold", target_kept_fraction=0.2)
    self_cal = run(q, k, v, rule)
    same = run(q, k, v, rule, calibration=(q, k))
    assert [p["thresholds"] for p in same.per_layer] == [p["thresholds"] for p in self_cal.per_layer]
    assert same.per_layer[0]["calibrated_on"] == "calibration trace"
    # another trace of the same family: thresholds differ, the kept fraction lands near (not at) the target
    q2, k2, _ = make_trace(seed=8, seq_q=64, seq_k=64)
    other = run(q, k, v, rule, calibration=(q2, k2))
    assert other.per_layer[0]["thresholds"] != self_cal.per_layer[0]["thresholds"]
    assert other.accuracy["kept_fraction"] == pytest.approx(0.2, abs=0.1)


def test_per_layer_override_and_fixed_threshold():
    q, k, v = make_trace(seed=9)
    res = run(q, k, v, LayerRule("threshold", target_kept_fraction=0.25, threshold=1e9),
              per_layer=((1, LayerRule("none")),))
    assert res.per_layer[1]["kept_fraction"] == 1.0 and res.per_layer[1]["rule"] == "none"
    # a reference above every score prunes everything: rows are empty and output zero (no fall-back)
    assert res.per_layer[0]["kept_fraction"] == 0.0 and res.per_layer[0]["threshold_source"] == "fixed"
    assert np.all(res.output[0] == 0) and np.all(res.output[2] == 0)
    assert res.accuracy["empty_rows"] == 2 * 4 * 40
    assert res.accuracy["kept_fraction"] == pytest.approx(1 / 3)


def test_bad_inputs_raise_one_line_errors():
    q, k, v = make_trace(layers=1)
    rule = LayerRule("none")
    with pytest.raises(TraceError, match="q: expected a 4-D array"):
        run(q[0], k, v, rule)
    with pytest.raises(TraceError, match="v: expected the shape of k"):
        run(q, k, v[:, :, :-1], rule)
    with pytest.raises(TraceError, match="kv_heads dividing heads"):
        run(q, k[:, :1].repeat(3, axis=1), v[:, :1].repeat(3, axis=1), rule)
    bad = q.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(TraceError, match="q: expected finite values, found NaN or inf in layer 0"):
        run(bad, k, v, rule)
    with pytest.raises(TraceError, match="query_offset"):
        run(q, k, v, rule, offset=5)
    with pytest.raises(TraceError, match="calibration q"):
        run(q, k, v, LayerRule("threshold", target_kept_fraction=0.5), calibration=(q[:, :2], k))
    spec = PruningSpec(rule)
    with pytest.raises(ConfigError, match="k_tile: expected a positive integer, got 0"):
        run_functional(q, k, v, scale=0.25, causal=True, pruning=spec, q_tile=4, k_tile=0, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        run_functional(q, k, v, scale=0.25, causal=True, pruning=spec, q_tile=4, k_tile=4, seed=-1)
    with pytest.raises(TraceError, match="scale"):
        run_functional(q, k, v, scale=float("nan"), causal=True, pruning=spec, q_tile=4, k_tile=4, seed=0)
