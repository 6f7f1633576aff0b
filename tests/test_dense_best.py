"""The dense-best baseline's pruning: its floor never exceeds a trial's bytes, and the pruned search returns
the exhaustive search's answer."""

from __future__ import annotations

import types

import numpy as np
import pytest

import soc.dataflow as dataflow
from soc.config import load_config
from soc.dataflow import Shape, dense_best_traffic
from soc.simulate import dense_config


def _causal(seq_q: int, seq_k: int, offset: int = 0) -> np.ndarray:
    return np.arange(seq_k)[None, :] <= np.arange(seq_q)[:, None] + offset


def _random(seq_q: int, seq_k: int) -> np.ndarray:
    valid = np.random.default_rng(7).random((seq_q, seq_k)) < 0.3
    valid[5] = False  # a query with no valid key (a dead row)
    return valid


CASES = [  # (validity, heads, kv_heads, head_dim, SRAM bank bytes: small enough that resident rarely fits)
    (_causal(256, 256), 4, 4, 64, 2048),
    (_causal(200, 328, offset=128), 4, 2, 32, 2048),  # a query offset, GQA group 2, partial tiles
    (_random(96, 160), 2, 1, 16, 512),
    (_causal(128, 128), 2, 2, 16, 8192),              # resident fits: the early answer
]


@pytest.mark.parametrize("valid, heads, kv_heads, head_dim, bank_bytes", CASES)
def test_pruned_dense_best_is_the_exhaustive_one(valid, heads, kv_heads, head_dim, bank_bytes, monkeypatch):
    cfg = dense_config(load_config("configs/hybrid65nm.yaml", [f"sram.bank_bytes={bank_bytes}"]))
    seq_q, seq_k = valid.shape
    shape = Shape(layers=2, heads=heads, seq_q=seq_q, seq_k=seq_k, head_dim=head_dim, kv_heads=kv_heads)
    func = types.SimpleNamespace(valid=valid)
    real = dataflow._dense_group
    trials: list[tuple] = []

    def spy(valid_, trial, shape_, placement, tables=None):
        totals = real(valid_, trial, shape_, placement, tables)
        trials.append((trial, placement, totals))
        return totals

    monkeypatch.setattr(dataflow, "_dense_group", spy)
    exhaustive = dense_best_traffic(func, cfg, shape, prune=False)
    every = list(trials)
    trials.clear()
    pruned = dense_best_traffic(func, cfg, shape)
    assert pruned == exhaustive
    assert len(trials) <= len(every)
    # the floor is a floor on every trial the exhaustive search ran (recomputed from the mask here)
    per_query = valid.sum(axis=1)
    for trial, placement, totals in every:
        q_tile = trial.dataflow.q_tile_rows
        nq = -(-seq_q // q_tile)
        rows = np.array([min(q_tile, seq_q - i * q_tile) for i in range(nq)])
        union = np.array([valid[i * q_tile:(i + 1) * q_tile].any(axis=0).sum() for i in range(nq)])
        floor = dataflow._dense_floor_bytes((rows, union, per_query), trial, shape, placement)
        assert floor <= totals["dram_read_bytes"] + totals["dram_write_bytes"], (placement.kv, q_tile)


def test_the_floor_prunes_at_long_context():
    """At seq 1024 most trials cannot beat the configured tiles' best: the floor skips them, same answer."""
    cfg = dense_config(load_config("configs/hybrid65nm.yaml"))
    valid = _causal(1024, 1024)
    shape = Shape(layers=1, heads=1, seq_q=1024, seq_k=1024, head_dim=128)
    func = types.SimpleNamespace(valid=valid)
    calls = {"n": 0}
    real = dataflow._dense_group

    def count(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataflow, "_dense_group", count)
        exhaustive = dense_best_traffic(func, cfg, shape, prune=False)
        every, calls["n"] = calls["n"], 0
        assert dense_best_traffic(func, cfg, shape) == exhaustive
    assert exhaustive["kv_placement"] != "resident"  # a search, not the early answer
    assert calls["n"] < every / 2
