"""What each tile asks of the memories under each K/V placement, against hand counts."""

from __future__ import annotations

import numpy as np
import pytest

from soc.config import load_config
from soc.dataflow import Placement, _fetched_keys, demand, traffic_totals
from soc.simulate import shape_of, simulate


def chunks_two_query_tiles():
    # one head, two query tiles x two key tiles; tile 1 shares 3 of its 5 keys with tile 0 in key tile 0
    return {"union_keys": np.array([4, 2, 5, 1]), "new_keys": np.array([4, 2, 2, 1]),
            "prev_union_keys": np.array([0, 0, 4, 2]), "shared_prev_keys": np.array([0, 0, 3, 1])}


@pytest.mark.parametrize("cache_rows, expect", [
    (100, [4, 2, 2, 0]),  # both tiles' rows fit: only rows the previous tile did not fetch are fetched
    (6, [4, 2, 5, 1]),    # q tile 0 needs 6 rows (fits), q tile 1 needs (4+5-3)+(2+1-1) = 8 rows: refetch
])
def test_reuse_fetches_only_new_survivors_while_both_tiles_fit(cache_rows, expect):
    first_k = np.array([True, False, True, False])
    row_bytes = 128
    got = _fetched_keys(chunks_two_query_tiles(), first_k, Placement("reuse", False, 0, cache_rows * row_bytes),
                        row_bytes)
    assert got.tolist() == expect


def test_stream_and_resident_fetch_counts():
    c = chunks_two_query_tiles()
    first_k = np.array([True, False, True, False])
    assert _fetched_keys(c, first_k, Placement("stream", False, 0), 128).tolist() == [4, 2, 5, 1]
    assert _fetched_keys(c, first_k, Placement("resident", False, 0), 128).tolist() == [4, 2, 2, 1]


@pytest.mark.parametrize("placement", ["stream", "reuse", "resident"])
def test_each_placement_counts_in_the_event_loop_what_the_demand_says(placement, small_trace):
    cfg = load_config("configs/hybrid65nm.yaml", [f"dataflow.kv_placement={placement}", "sram.bank_bytes=16384"])
    res = simulate(cfg, small_trace)
    expect = traffic_totals(demand(res.functional.chunks, cfg, shape_of(small_trace), res.stats.placement),
                            res.stats.placement)
    for key, value in expect.items():
        assert res.report["traffic"][key] == pytest.approx(value), key
    rate = res.report["traffic"]["kv_reuse_hit_rate"]
    assert (rate == 0.0) if placement == "stream" else (0.0 < rate < 1.0)
    fetched = demand(res.functional.chunks, cfg, shape_of(small_trace), res.stats.placement)["kv_fetch_rows"].sum()
    assert rate == pytest.approx(1.0 - fetched / res.functional.chunks["union_keys"].sum())
