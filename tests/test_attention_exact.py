"""Exact attention and the CIM's approximate score, against plain float64 calculations written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from soc.attention.approx import approx_scores, msb_quantize
from soc.attention.exact import attention, expand_kv, softmax_masked, valid_mask
from soc.attention.spec import CimQuantSpec


def reference_attention(q, k, v, scale, causal, query_offset=0, keep=None):
    """Loop-by-loop float64 attention: the independent calculation (tiny shapes only)."""
    heads, seq_q, dim = q.shape
    kv_heads, seq_k, _ = k.shape
    group = heads // kv_heads
    out = np.zeros((heads, seq_q, dim))
    probs = np.zeros((heads, seq_q, seq_k))
    for h in range(heads):
        for i in range(seq_q):
            cols = [j for j in range(seq_k) if (not causal or j <= i + query_offset)
                    and (keep is None or keep[h, i, j])]
            if not cols:
                continue
            logits = [scale * float(np.dot(q[h, i].astype(np.float64), k[h // group, j].astype(np.float64)))
                      for j in cols]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            total = sum(weights)
            for j, w in zip(cols, weights):
                probs[h, i, j] = w / total
                out[h, i] += (w / total) * v[h // group, j].astype(np.float64)
    return out, probs


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("heads,kv_heads,seq_q,seq_k,causal,offset", [
    (3, 3, 7, 7, False, 0),     # plain encoder
    (3, 3, 7, 7, True, 0),      # causal prefill
    (4, 2, 6, 6, True, 0),      # grouped-query attention
    (6, 2, 3, 9, True, 6),      # decode: the 3 queries sit at absolute positions 6, 7, 8
    (2, 1, 4, 5, False, 0),     # multi-query, rectangular
])
def test_attention_matches_reference(rng, heads, kv_heads, seq_q, seq_k, causal, offset):
    dim = 8
    q = rng.standard_normal((heads, seq_q, dim)).astype(np.float32)
    k = rng.standard_normal((kv_heads, seq_k, dim)).astype(np.float32)
    v = rng.standard_normal((kv_heads, seq_k, dim)).astype(np.float32)
    out, probs = attention(q, k, v, scale=dim ** -0.5, causal=causal, query_offset=offset)
    ref_out, ref_probs = reference_attention(q, k, v, dim ** -0.5, causal, offset)
    assert out.dtype == np.float32 and out.shape == (heads, seq_q, dim)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_attention_with_keep_mask_and_empty_row(rng):
    heads, seq, dim = 2, 6, 4
    q = rng.standard_normal((heads, seq, dim)).astype(np.float32)
    k = rng.standard_normal((heads, seq, dim)).astype(np.float32)
    v = rng.standard_normal((heads, seq, dim)).astype(np.float32)
    keep = rng.random((heads, seq, seq)) < 0.5
    keep[1, 3] = False                      # a row with nothing kept
    keep[0, 4] = False
    keep[0, 4, 5] = True                    # kept but causally invalid: must still be dropped
    out, probs = attention(q, k, v, scale=0.5, causal=True, keep=keep)
    ref_out, ref_probs = reference_attention(q, k, v, 0.5, True, keep=keep)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
    assert np.all(out[1, 3] == 0) and np.all(probs[1, 3] == 0)
    assert np.all(out[0, 4] == 0), "the only kept key of row 4 is in its future"
    assert np.isfinite(out).all()


def test_valid_mask_by_hand():
    expected = np.array([[1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(valid_mask(3, 5, True, 2), expected)
    assert valid_mask(3, 5, False, 2).all()
    with pytest.raises(ValueError, match="query_offset"):
        valid_mask(3, 5, True, -1)


def test_softmax_masked_empty_rows_and_huge_masked_logits():
    logits = np.array([[1.0, 2.0, 1e30], [5.0, 6.0, 7.0]], dtype=np.float32)
    mask = np.array([[True, True, False], [False, False, False]])
    probs = softmax_masked(logits, mask)
    e = np.exp([1.0 - 2.0, 0.0])
    np.testing.assert_allclose(probs[0], [e[0] / e.sum(), e[1] / e.sum(), 0.0], rtol=1e-6)
    assert np.all(probs[1] == 0) and np.isfinite(probs).all()


def test_expand_kv_groups_consecutive_heads():
    x = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    out = expand_kv(x, 6)
    assert out.shape == (6, 3, 1)
    for h in range(6):
        np.testing.assert_array_equal(out[h], x[h // 3])
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        expand_kv(x, 5)


def test_msb_quantize_hand_example():
    # full 8 bits: step = 1/127 -> ints [127, -38, 25, -127, 0]; keep 4 MSBs = floor(/16) -> [7, -3, 1, -8, 0]
    x = np.array([1.0, -0.3, 0.2, -1.0, 0.0], dtype=np.float32)
    ints, lsb = msb_quantize(x, 4, 8)
    np.testing.assert_array_equal(ints, [7, -3, 1, -8, 0])
    assert ints.dtype == np.float32
    assert lsb == pytest.approx(16 / 127, rel=1e-6)
    # keeping all bits is plain symmetric rounding
    ints8, lsb8 = msb_quantize(x, 8, 8)
    np.testing.assert_array_equal(ints8, [127, -38, 25, -127, 0])
    assert lsb8 == pytest.approx(1 / 127, rel=1e-6)


def test_msb_quantize_is_an_arithmetic_shift_per_head(rng):
    x = rng.standard_normal((3, 5, 4)).astype(np.float32) * np.array([0.1, 1.0, 30.0])[:, None, None]
    x[2] = 0.0                                           # an all-zero head stays zero, no division by zero
    ints, lsb = msb_quantize(x, 3, 8)
    assert lsb.shape == (3,)
    for h in range(2):
        step = float(np.abs(x[h]).max()) / 127
        full = np.clip(np.rint(x[h].astype(np.float64) / step), -127, 127).astype(np.int64)
        np.testing.assert_array_equal(ints[h], np.right_shift(full, 5))
        assert lsb[h] == pytest.approx(step * 32, rel=1e-6)
    assert np.all(ints[2] == 0)
    assert ints.min() >= -4 and ints.max() <= 3          # the 3-bit two's complement range


def test_approx_scores_equal_float64_dot_of_quantized_ints(rng):
    heads, kv_heads, seq_q, seq_k, dim, scale = 4, 2, 5, 7, 16, 0.25
    q = rng.standard_normal((heads, seq_q, dim)).astype(np.float32)
    k = rng.standard_normal((kv_heads, seq_k, dim)).astype(np.float32) * 3.0
    quant = CimQuantSpec(query_bits=4, key_bits=3, full_bits=8, rounding="floor")
    approx, score_lsb = approx_scores(q, k, quant, scale)
    assert approx.dtype == np.float32 and approx.shape == (heads, seq_q, seq_k)
    for h in range(heads):
        qi, lq = msb_quantize(q[h], 4, 8)
        ki, lk = msb_quantize(k[h // 2], 3, 8)
        ref = qi.astype(np.float64) @ ki.astype(np.float64).T * float(lq) * float(lk) * scale
        np.testing.assert_allclose(approx[h], ref, rtol=1e-6, atol=1e-9)
        assert score_lsb[h] == pytest.approx(float(lq) * float(lk) * scale, rel=1e-9)
        # the integer dot product is exact: scores sit on the lsb grid
        units = approx[h] / score_lsb[h]
        np.testing.assert_allclose(units, np.rint(units), atol=1e-3)
    # and it approximates the exact logits (4/3-bit MSBs: correlated, not equal)
    exact = np.einsum("hqd,hkd->hqk", q, expand_kv(k, heads)) * scale
    assert np.corrcoef(exact.ravel(), approx.ravel())[0, 1] > 0.8


def test_noise_is_gaussian_in_integer_units():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 64, 32)).astype(np.float32)
    k = rng.standard_normal((2, 128, 32)).astype(np.float32)
    clean = approx_scores(q, k, CimQuantSpec(), 0.5)
    noisy = approx_scores(q, k, CimQuantSpec(noise_sigma_lsb=2.0), 0.5, np.random.default_rng(3))
    units = (noisy.scores - clean.scores) / noisy.score_lsb[:, None, None]
    assert abs(units.mean()) < 0.05 and units.std() == pytest.approx(2.0, rel=0.03)
    with pytest.raises(ValueError, match="rng"):
        approx_scores(q, k, CimQuantSpec(noise_sigma_lsb=1.0), 0.5)


@pytest.mark.parametrize("heads_per_step", [None, 1])
@pytest.mark.parametrize("mask", ["full", "causal", "scattered"])
def test_attention_work_equals_two_masked_softmaxes_bit_for_bit(rng, monkeypatch, mask, heads_per_step):
    """All heads in one step, or one head a step (what a large head gets, HEAD_GROUP_PAIRS): the same bits."""
    from soc.attention import exact
    from soc.attention.exact import AttentionWork, scores, softmax_masked, weighted_sum

    heads, sq, sk, d = 3, 20, 24, 8
    q, k, v = (rng.standard_normal((heads, n, d)).astype(np.float32) for n in (sq, sk, sk))
    valid = {"full": np.ones((sq, sk), bool), "causal": valid_mask(sq, sk, True, 4).copy(),
             "scattered": rng.random((sq, sk)) < 0.7}[mask]
    valid[3] = False  # a row with no valid key
    keep = valid & (rng.random((heads, sq, sk)) < 0.4)
    keep[:, 5] = False  # an empty kept row
    if heads_per_step:
        monkeypatch.setattr(exact, "HEAD_GROUP_PAIRS", heads_per_step * sq * sk)
    work = AttentionWork(valid)
    assert len(list(work._steps(heads))) == (heads if heads_per_step else 1)
    logits = scores(q, k, 0.3)
    for kept in (keep, None):
        got = work.attend(q, k, v, 0.3, kept)
        probs = softmax_masked(logits, valid)
        kept_pairs = np.broadcast_to(valid, probs.shape) if kept is None else kept
        # the mass metrics read: each row's exact probability on its kept keys, summed in float64
        mass = np.einsum("hqk,hqk->hq", probs, kept_pairs, dtype=np.float64, casting="unsafe")
        assert got.mass_kept.tobytes() == mass.tobytes()
        assert got.out_exact.tobytes() == weighted_sum(probs, v).tobytes()
        want = weighted_sum(softmax_masked(logits, kept), v) if kept is not None else weighted_sum(probs, v)
        assert got.out_pruned.tobytes() == want.tobytes()
        np.testing.assert_array_equal(got.exact_arg, np.where(valid, logits, -np.inf).argmax(-1))


def test_mask_memo_remembers_read_only_masks_only():
    from soc.attention.exact import row_blocks, valid_mask

    ro = valid_mask(600, 600, True)
    assert row_blocks(ro) is row_blocks(ro)                      # asked once per head: computed once
    rw = valid_mask(600, 600, True).copy()
    first = row_blocks(rw)
    assert len(first) == 3
    rw[:] = True                                                 # same array, new contents: not a stale answer
    assert row_blocks(rw) == [(0, 600, 600)]
