"""Per-chunk counts against a brute-force loop over chunks, rows and keys."""

from __future__ import annotations

import numpy as np
import pytest

from soc.attention.exact import valid_mask
from soc.attention.plan import COUNT_KEYS, chunk_counts, survivor_tables, tile_counts


def brute_counts(keep, valid, q_tile, k_tile, group=1):
    """``group`` query heads share a KV head and run one after another: "seen" and "previous" carry over."""
    heads, seq_q, seq_k = keep.shape
    nq, nk = -(-seq_q // q_tile), -(-seq_k // k_tile)
    out = {key: np.zeros((heads, nq, nk), dtype=np.int64) for key in COUNT_KEYS}
    for h, a in ((h, a) for h in range(heads) for a in range(nq)):
        if h % group == 0 and a == 0:
            seen, previous = [set() for _ in range(nk)], [set() for _ in range(nk)]
        for b in range(nk):
            keys = range(b * k_tile, min(seq_k, (b + 1) * k_tile))
            rows = range(a * q_tile, min(seq_q, (a + 1) * q_tile))
            vh = valid if valid.ndim == 2 else valid[h]
            kept = {(i, j) for i in rows for j in keys if keep[h, i, j] and vh[i, j]}
            union = {j for _, j in kept}
            out["q_rows"][h, a, b] = len(rows)
            out["k_cols"][h, a, b] = len(keys)
            out["pairs_valid"][h, a, b] = sum(bool(vh[i, j]) for i in rows for j in keys)
            out["pairs_kept"][h, a, b] = len(kept)
            out["union_keys"][h, a, b] = len(union)
            out["new_keys"][h, a, b] = len(union - seen[b])
            out["rows_kept"][h, a, b] = len({i for i, _ in kept})
            out["prev_union_keys"][h, a, b] = len(previous[b])
            out["shared_prev_keys"][h, a, b] = len(union & previous[b])
            seen[b] |= union
            previous[b] = union
    return out


@pytest.mark.parametrize("seq_q,seq_k,q_tile,k_tile,offset", [
    (13, 29, 4, 8, 0),     # partial tiles on both axes (causal rows beyond seq_q never happen: seq_k > seq_q)
    (16, 32, 4, 8, 16),    # tiles fit exactly (the reshape is a view), decode-style offset
    (5, 5, 8, 8, 0),       # one partial tile larger than the matrix
    (7, 9, 1, 1, 2),       # single-element chunks
    (40, 70, 3, 16, 5),    # chunk rows of 16, 32 and 64 keys test one machine word each (partial last tiles)
    (33, 130, 5, 32, 0),
    (20, 200, 7, 64, 3),
    (9, 50, 2, 12, 1),     # a chunk row that is no machine word: the plain reduction
])
def test_chunk_counts_match_brute_force(seq_q, seq_k, q_tile, k_tile, offset):
    rng = np.random.default_rng(seq_q * 100 + seq_k)
    keep = rng.random((3, seq_q, seq_k)) < 0.35
    valid = valid_mask(seq_q, seq_k, True, offset)
    got = chunk_counts(keep, valid, q_tile, k_tile)
    ref = brute_counts(keep, valid, q_tile, k_tile)
    for key in COUNT_KEYS:
        assert got[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_chunk_counts_with_per_head_validity():
    rng = np.random.default_rng(4)
    keep = rng.random((2, 10, 12)) < 0.5
    valid = rng.random((2, 10, 12)) < 0.7
    got = chunk_counts(keep, valid, 3, 5)
    ref = brute_counts(keep, valid, 3, 5)
    for key in COUNT_KEYS:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_count_invariants():
    rng = np.random.default_rng(8)
    keep = rng.random((4, 37, 53)) < 0.2
    valid = valid_mask(37, 53, True, 16)
    got = chunk_counts(keep, valid, 8, 16)
    kept = keep & valid
    assert got["pairs_kept"].sum() == kept.sum()
    assert got["pairs_valid"].sum() == 4 * valid.sum()
    assert np.all(got["q_rows"].sum(axis=1) == 37) and np.all(got["k_cols"].sum(axis=2) == 53)
    # new keys over all query tiles = keys kept by any row of the head, per key tile
    for b, start in enumerate(range(0, 53, 16)):
        union = kept[:, :, start:start + 16].any(axis=1).sum(axis=1)
        np.testing.assert_array_equal(got["new_keys"][:, :, b].sum(axis=1), union)
    assert np.all(got["new_keys"] <= got["union_keys"])
    assert np.all(got["union_keys"] <= np.minimum(got["k_cols"], got["pairs_kept"]))
    assert np.all(got["rows_kept"] <= got["q_rows"])
    assert np.all(got["pairs_kept"] <= got["pairs_valid"])


def test_tile_counts_and_errors():
    np.testing.assert_array_equal(tile_counts(10, 4), [4, 4, 2])
    np.testing.assert_array_equal(tile_counts(8, 4), [4, 4])
    with pytest.raises(ValueError, match="q_tile: expected a positive integer, got 0"):
        chunk_counts(np.ones((1, 2, 2), bool), np.ones((2, 2), bool), 0, 1)
    with pytest.raises(ValueError, match="valid: expected shape"):
        chunk_counts(np.ones((1, 2, 2), bool), np.ones((3, 2), bool), 1, 1)


def test_gqa_counts_carry_over_the_query_heads_of_a_kv_head():
    """6 query heads over 2 KV heads: a K/V row is new once per KV head, and a group's next query head
    follows its previous one (its first tile's "previous" is the last tile of the head before)."""
    rng = np.random.default_rng(5)
    keep = rng.random((6, 11, 19)) < 0.3
    valid = valid_mask(11, 19, True, 8)
    got = chunk_counts(keep, valid, 4, 8, group=3)
    ref = brute_counts(keep, valid, 4, 8, group=3)
    for key in COUNT_KEYS:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    kept = (keep & valid).reshape(2, 3 * 11, 19)
    assert got["new_keys"].sum() == kept.any(axis=1).sum()
    with pytest.raises(ValueError, match="group: expected a positive integer dividing the heads"):
        chunk_counts(keep, valid, 4, 8, group=4)


def test_survivor_tables_match_per_query_sets():
    rng = np.random.default_rng(6)
    heads, seq_q, seq_k, q_tile, k_tile, group = 4, 9, 13, 4, 5, 2
    keep = rng.random((heads, seq_q, seq_k)) < 0.4
    valid = valid_mask(seq_q, seq_k, True, 4)
    got = survivor_tables(keep, valid, q_tile, k_tile, group)
    kept = keep & valid
    for h in range(heads):
        for i in range(seq_q):
            first = h % group == 0 and i == 0
            prev = set() if first else set(np.flatnonzero(kept[h, i - 1] if i else kept[h - 1, -1]))
            assert got["prev_total"][h, i] == (-1 if first else len(prev))
            for b in range(-(-seq_k // k_tile)):
                now = {j for j in np.flatnonzero(kept[h, i]) if b * k_tile <= j < (b + 1) * k_tile}
                assert got["row_kept"][h, i, b] == len(now)
                assert got["row_shared"][h, i, b] == len(now & prev)
        for a in range(-(-seq_q // q_tile)):
            np.testing.assert_array_equal(got["key_used"][h, a], kept[h, a * q_tile:(a + 1) * q_tile].any(axis=0))
