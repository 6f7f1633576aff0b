"""The chunk tables the functional pass hands to the timing model, built in place with bounded memory.

A chunk table is a dict of flat int32 arrays in (layer, head, qtile, ktile) order under
:data:`CHUNK_INDEX_KEYS` + :data:`~soc.attention.plan.COUNT_KEYS`, with ``kv_head`` the KV head each query head
reads (GQA). Chunks with no valid pair are dropped. Which chunks are live depends on the causal validity only,
the same for every (layer, head), so the table's length is known before the first layer: it is allocated once
and each slice of whole GQA groups writes its own rows (no per-layer parts, no concatenation). The no-pruning
counterfactual is one KV group's table (its query heads in sequence), repeated on demand.
"""

from __future__ import annotations

import numpy as np

from soc.attention.plan import COUNT_KEYS, chunk_counts

CHUNK_INDEX_KEYS = ("layer", "head", "qtile", "ktile", "kv_head")
#: Counts and indices fit in int32: a chunk holds at most q_tile x k_tile pairs, a trace far fewer than 2**31
#: tiles per axis.
CHUNK_DTYPE = np.int32
#: Bytes of one chunk-table row: every index and count column.
CHUNK_ROW_BYTES = (len(CHUNK_INDEX_KEYS) + len(COUNT_KEYS)) * np.dtype(CHUNK_DTYPE).itemsize


def group_chunks(counts: dict[str, np.ndarray], live: np.ndarray) -> dict[str, np.ndarray]:
    """The live rows of one KV group's counts (group, nq, nk) as a table with layer = kv_head = 0."""
    group, nq, nk = counts["q_rows"].shape
    qtile, ktile = np.divmod(np.flatnonzero(live), nk)
    n = len(qtile)
    out = {"layer": np.zeros(n * group, CHUNK_DTYPE),
           "head": np.repeat(np.arange(group, dtype=CHUNK_DTYPE), n),
           "qtile": np.tile(qtile.astype(CHUNK_DTYPE), group), "ktile": np.tile(ktile.astype(CHUNK_DTYPE), group),
           "kv_head": np.zeros(n * group, CHUNK_DTYPE)}
    out.update({key: counts[key].reshape(group, -1)[:, live].reshape(-1).astype(CHUNK_DTYPE)
                for key in COUNT_KEYS})
    return out


def dense_group_table(valid: np.ndarray, q_tile: int, k_tile: int, group: int = 1) -> dict[str, np.ndarray]:
    """The no-pruning counterfactual (keep = valid) of one KV group: its ``group`` query heads in sequence,
    layer = kv_head = 0. Every (layer, KV head) of a trace has this same table."""
    dense = chunk_counts(np.broadcast_to(valid, (group, *valid.shape)), valid, q_tile, k_tile, group)
    return group_chunks(dense, dense["pairs_valid"][0].reshape(-1) > 0)


def repeat_groups(one: dict[str, np.ndarray], layers: int, kv_heads: int) -> dict[str, np.ndarray]:
    """One KV group's table repeated for every (layer, KV head), in table order."""
    group = int(one["head"].max()) + 1 if len(one["head"]) else 1
    table = {key: np.tile(val, layers * kv_heads) for key, val in one.items()}
    lk = np.repeat(np.arange(layers * kv_heads, dtype=CHUNK_DTYPE), len(one["qtile"]))
    table["layer"], table["kv_head"] = lk // kv_heads, lk % kv_heads
    table["head"] = table["kv_head"] * group + table["head"]
    return table


class ChunkTable:
    """The pruned run's chunk table, filled slice by slice of whole GQA groups."""

    def __init__(self, valid: np.ndarray, layers: int, heads: int, q_tile: int, k_tile: int,
                 group: int = 1, layer_ids=None) -> None:
        """``layers`` rows of layers (the trace's indices ``layer_ids``, default 0..layers-1); ``put`` and
        ``put_dense`` take the row's position, the ``layer`` column holds its index."""
        self.q_tile, self.k_tile, self.heads, self.group = q_tile, k_tile, heads, group
        self.valid = valid
        dense = chunk_counts(valid[None], valid, q_tile, k_tile)
        self.live = dense["pairs_valid"][0].reshape(-1) > 0
        #: the no-pruning counterfactual of one KV group (keep = valid), layer = kv_head = 0
        self.dense_group = dense_group_table(valid, q_tile, k_tile, group)
        per_head = int(np.count_nonzero(self.live))
        self.per_head = per_head
        shape = (layers * heads, per_head)
        self.rows = {key: np.empty(shape, CHUNK_DTYPE) for key in CHUNK_INDEX_KEYS + COUNT_KEYS}
        lh = np.arange(layers * heads, dtype=CHUNK_DTYPE)
        ids = np.arange(layers, dtype=CHUNK_DTYPE) if layer_ids is None else np.asarray(layer_ids, CHUNK_DTYPE)
        self.rows["layer"][:] = ids[lh // heads][:, None]
        self.rows["head"][:] = (lh % heads)[:, None]
        self.rows["kv_head"][:] = (lh % heads // group)[:, None]
        self.rows["qtile"][:] = self.dense_group["qtile"][:per_head]
        self.rows["ktile"][:] = self.dense_group["ktile"][:per_head]

    def put(self, layer: int, h0: int, keep: np.ndarray) -> None:
        """Count the chunks of heads [h0, h0 + H) of row ``layer`` (whole groups) from their keep mask (H, Sq, Sk)."""
        start = layer * self.heads + h0
        counts = chunk_counts(keep, self.valid, self.q_tile, self.k_tile, self.group)
        n = keep.shape[0]
        for key in COUNT_KEYS:
            self.rows[key][start:start + n] = counts[key].reshape(n, -1)[:, self.live]

    def put_dense(self, layer: int, h0: int, n: int) -> None:
        """Heads [h0, h0 + n) of ``layer`` (whole groups) keep every valid pair: the counterfactual's counts."""
        start = layer * self.heads + h0
        for key in COUNT_KEYS:
            one = self.dense_group[key].reshape(self.group, -1)
            self.rows[key][start:start + n] = np.tile(one, (n // self.group, 1))

    def flat(self) -> dict[str, np.ndarray]:
        """The table as flat arrays (views, no copy)."""
        return {key: val.reshape(-1) for key, val in self.rows.items()}
