"""The chunk tables the functional pass hands to the timing model, built in place with bounded memory.

A chunk table is a dict of flat int32 arrays in (layer, head, qtile, ktile) order under
:data:`CHUNK_INDEX_KEYS` + :data:`~soc.attention.plan.COUNT_KEYS`. Chunks with no valid pair are dropped. Which
chunks are live depends on the causal validity only, the same for every (layer, head), so the table's length
is known before the first layer: it is allocated once and each head slice writes its own rows (no per-layer
parts, no concatenation). The no-pruning counterfactual is one head's table, repeated on demand.
"""

from __future__ import annotations

import numpy as np

from soc.attention.plan import COUNT_KEYS, chunk_counts

CHUNK_INDEX_KEYS = ("layer", "head", "qtile", "ktile")
#: Counts and indices fit in int32: a chunk holds at most q_tile x k_tile pairs, a trace far fewer than 2**31
#: tiles per axis.
CHUNK_DTYPE = np.int32


def head_chunks(counts: dict[str, np.ndarray], live: np.ndarray) -> dict[str, np.ndarray]:
    """The live rows of one head's counts (1, nq, nk) as a table with layer = head = 0."""
    nq, nk = counts["q_rows"].shape[1:]
    qtile, ktile = np.divmod(np.flatnonzero(live), nk)
    out = {"layer": np.zeros(len(qtile), CHUNK_DTYPE), "head": np.zeros(len(qtile), CHUNK_DTYPE),
           "qtile": qtile.astype(CHUNK_DTYPE), "ktile": ktile.astype(CHUNK_DTYPE)}
    out.update({key: counts[key].reshape(-1)[live].astype(CHUNK_DTYPE) for key in COUNT_KEYS})
    return out


def repeat_heads(one: dict[str, np.ndarray], layers: int, heads: int) -> dict[str, np.ndarray]:
    """One head's table repeated for every (layer, head), in table order."""
    table = {key: np.tile(val, layers * heads) for key, val in one.items()}
    lh = np.repeat(np.arange(layers * heads, dtype=CHUNK_DTYPE), len(one["qtile"]))
    table["layer"], table["head"] = lh // heads, lh % heads
    return table


class ChunkTable:
    """The pruned run's chunk table, filled head slice by head slice."""

    def __init__(self, valid: np.ndarray, layers: int, heads: int, q_tile: int, k_tile: int) -> None:
        self.q_tile, self.k_tile, self.heads = q_tile, k_tile, heads
        self.valid = valid
        dense = chunk_counts(valid[None], valid, q_tile, k_tile)
        self.live = dense["pairs_valid"].reshape(-1) > 0
        #: the no-pruning counterfactual of one head (keep = valid), layer = head = 0
        self.dense_head = head_chunks(dense, self.live)
        per_head = len(self.dense_head["qtile"])
        self.per_head = per_head
        shape = (layers * heads, per_head)
        self.rows = {key: np.empty(shape, CHUNK_DTYPE) for key in CHUNK_INDEX_KEYS + COUNT_KEYS}
        self.rows["layer"][:] = (np.arange(layers * heads, dtype=CHUNK_DTYPE) // heads)[:, None]
        self.rows["head"][:] = (np.arange(layers * heads, dtype=CHUNK_DTYPE) % heads)[:, None]
        self.rows["qtile"][:] = self.dense_head["qtile"]
        self.rows["ktile"][:] = self.dense_head["ktile"]

    def put(self, layer: int, h0: int, keep: np.ndarray) -> None:
        """Count the chunks of heads [h0, h0 + H) of ``layer`` from their keep mask (H, Sq, Sk)."""
        start = layer * self.heads + h0
        counts = chunk_counts(keep, self.valid, self.q_tile, self.k_tile)
        n = keep.shape[0]
        for key in COUNT_KEYS:
            self.rows[key][start:start + n] = counts[key].reshape(n, -1)[:, self.live]

    def put_dense(self, layer: int, h0: int, n: int) -> None:
        """Heads [h0, h0 + n) of ``layer`` keep every valid pair: the counterfactual's counts."""
        start = layer * self.heads + h0
        for key in COUNT_KEYS:
            self.rows[key][start:start + n] = self.dense_head[key]

    def flat(self) -> dict[str, np.ndarray]:
        """The table as flat arrays (views, no copy)."""
        return {key: val.reshape(-1) for key, val in self.rows.items()}
