"""Per-chunk work counts: the bridge from the functional masks to the timing model.

The score matrix of each (layer, head) is cut into chunks of ``q_tile`` query rows x ``k_tile`` keys (the
last chunk of a row or column of chunks may be partial). For each chunk the hardware needs to know how many
rows and keys it spans, how many pairs are causally valid (what the CIM must score) and kept (what the digital
side computes), which K/V rows the digital side needs (``union_keys``), which of those were not already needed
by an earlier query tile of the same head and key tile (``new_keys``: the fetch when K/V stays resident on
chip), and how many rows keep anything (``rows_kept``). For K/V rows that stay in SRAM from one query tile to
the next, ``prev_union_keys`` counts the keys the previous query tile of the same head and key tile needed and
``shared_prev_keys`` those it shares with this one (adjacent queries share most survivors).

Grouped-query attention: K/V rows belong to KV heads, each shared by ``group`` consecutive query heads that the
SoC walks one after another (head-major, then query tiles). "Earlier" and "previous" run over that walk, so
``new_keys`` counts a K/V row once per KV head and the first query tile of a group's second head follows the
last query tile of its first head.

All counts come from one padded reshape (H, nq, q_tile, nk, k_tile) of the masks; no loop over chunks.
:func:`survivor_tables` gives what the per-query (``row``) and cached (``cache``) dataflows need beyond that.
"""

from __future__ import annotations

import numpy as np

from soc.attention.exact import MaskMemo, all_valid

COUNT_KEYS = ("q_rows", "k_cols", "pairs_valid", "pairs_kept", "union_keys", "new_keys", "rows_kept",
              "prev_union_keys", "shared_prev_keys")


def tile_counts(n: int, tile: int) -> np.ndarray:
    """Sizes of the tiles that cover ``n`` items with tiles of ``tile`` (the last may be partial)."""
    starts = np.arange(0, n, tile)
    return np.minimum(tile, n - starts).astype(np.int64)


def live_chunks(seq_q: int, seq_k: int, causal: bool, query_offset: int, q_tile: int, k_tile: int) -> int:
    """Chunks of one head that hold a valid pair (the rows :func:`chunk_counts` keeps), from the shape alone:
    every chunk without causality, else those whose first key some row of the query tile may see."""
    nk = -(-seq_k // k_tile)
    if not causal:
        return -(-seq_q // q_tile) * nk
    last_row = np.minimum(np.arange(q_tile, seq_q + q_tile, q_tile), seq_q) - 1  # each query tile's last row
    return int(np.minimum(nk, (last_row + query_offset) // k_tile + 1).sum())


def _tiled(mask: np.ndarray, q_tile: int, k_tile: int) -> np.ndarray:
    """(H, Sq, Sk) -> (H, nq, q_tile, nk, k_tile), padding with False (a view when the tiles fit exactly)."""
    heads, seq_q, seq_k = mask.shape
    nq, nk = -(-seq_q // q_tile), -(-seq_k // k_tile)
    if seq_q % q_tile or seq_k % k_tile:
        padded = np.zeros((heads, nq * q_tile, nk * k_tile), dtype=bool)
        padded[:, :seq_q, :seq_k] = mask
        mask = padded
    return mask.reshape(heads, nq, q_tile, nk, k_tile)


def _per_key(tiles: np.ndarray) -> np.ndarray:
    """(H, nq, q_tile, nk, k_tile) bool -> (H, nq, nk, k_tile): how many rows of each chunk hold each key (a sum
    of whole rows, which numpy vectorises, instead of a reduction over strided axes)."""
    dtype = np.uint8 if tiles.shape[2] < 256 else np.int32
    return tiles.view(np.uint8).sum(axis=2, dtype=dtype)


_WORD = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _row_used(tiles: np.ndarray) -> np.ndarray:
    """(H, nq, q_tile, nk, k_tile) bool -> (H, nq, q_tile, nk): does the row keep any key of the chunk. A chunk
    row of 8, 16, 32 or 64 keys packs into one machine word, tested at once."""
    heads, nq, q_tile, nk, k_tile = tiles.shape
    word = _WORD.get(k_tile // 8) if k_tile % 8 == 0 else None
    if word is None:
        return tiles.any(axis=4)
    packed = np.packbits(tiles.reshape(heads, nq * q_tile, nk * k_tile), axis=-1)
    return (packed.view(word) != 0).reshape(heads, nq, q_tile, nk)


def _check_group(heads: int, group: int) -> None:
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1 or heads % group:
        raise ValueError(f"group: expected a positive integer dividing the heads ({heads}), got {group!r}")


def _walk(a: np.ndarray, group: int) -> np.ndarray:
    """(H, n, ...) -> (H / group, group * n, ...): a KV head's query heads one after another."""
    return a.reshape(a.shape[0] // group, group * a.shape[1], *a.shape[2:])


_PAIRS_VALID = MaskMemo()


def _pairs_valid(valid: np.ndarray, q_tile: int, k_tile: int) -> np.ndarray:
    """Valid pairs per chunk, (1 or H, nq, nk), of a validity (Sq, Sk) or (H, Sq, Sk)."""
    valid3 = valid[None] if valid.ndim == 2 else valid
    out = _per_key(_tiled(valid3, q_tile, k_tile)).sum(axis=-1, dtype=np.int64)
    out.setflags(write=False)
    return out


def chunk_counts(keep: np.ndarray, valid: np.ndarray, q_tile: int, k_tile: int,
                 group: int = 1) -> dict[str, np.ndarray]:
    """Counts per chunk for a keep mask (H, Sq, Sk) and validity (Sq, Sk) or (H, Sq, Sk).

    Returns int64 arrays of shape (H, nq, nk) under :data:`COUNT_KEYS`. ``keep`` is ANDed with ``valid``.
    ``group``: consecutive query heads sharing one KV head (GQA; 1 for multi-head attention).
    """
    if keep.ndim != 3:
        raise ValueError(f"keep: expected a (heads, seq_q, seq_k) mask, got shape {keep.shape}")
    heads, seq_q, seq_k = keep.shape
    if valid.shape not in ((seq_q, seq_k), keep.shape):
        raise ValueError(f"valid: expected shape {(seq_q, seq_k)} or {keep.shape}, got {valid.shape}")
    for name, tile in (("q_tile", q_tile), ("k_tile", k_tile)):
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise ValueError(f"{name}: expected a positive integer, got {tile!r}")
    _check_group(heads, group)
    if not all_valid(valid):
        keep = keep & valid
    q_sizes, k_sizes = tile_counts(seq_q, q_tile), tile_counts(seq_k, k_tile)
    nq, nk = len(q_sizes), len(k_sizes)
    shape = (heads, nq, nk)

    pairs_valid = _PAIRS_VALID.get((valid,), (q_tile, k_tile), lambda: _pairs_valid(valid, q_tile, k_tile))
    tiles = _tiled(keep, q_tile, k_tile)
    per_key = _per_key(tiles)                         # (H, nq, nk, k_tile): rows of the chunk keeping each key
    pairs_kept = per_key.sum(axis=-1, dtype=np.int64)
    key_used = per_key > 0                            # kept by some row of the chunk
    row_used = _row_used(tiles)                       # (H, nq, q_tile, nk): row keeps some key in the chunk
    # A key is new in query tile i if no earlier query tile of the same KV head and key tile kept it.
    walk = _walk(key_used, group)                     # (KV, group * nq, nk, k_tile) in walk order
    seen_before = np.zeros_like(walk)
    prev_used = np.zeros_like(walk)
    if walk.shape[1] > 1:
        seen_before[:, 1:] = np.logical_or.accumulate(walk, axis=1)[:, :-1]
        prev_used[:, 1:] = walk[:, :-1]
    new = (walk & ~seen_before).reshape(key_used.shape)
    prev_used = prev_used.reshape(key_used.shape)
    return {
        "q_rows": np.broadcast_to(q_sizes[None, :, None], shape).copy(),
        "k_cols": np.broadcast_to(k_sizes[None, None, :], shape).copy(),
        "pairs_valid": np.broadcast_to(pairs_valid, shape).copy(),
        "pairs_kept": pairs_kept,
        "union_keys": key_used.sum(axis=-1, dtype=np.int64),
        "new_keys": new.sum(axis=-1, dtype=np.int64),
        "rows_kept": row_used.sum(axis=2, dtype=np.int64),
        "prev_union_keys": prev_used.sum(axis=-1, dtype=np.int64),
        "shared_prev_keys": (key_used & prev_used).sum(axis=-1, dtype=np.int64),
    }


def survivor_tables(keep: np.ndarray, valid: np.ndarray, q_tile: int, k_tile: int,
                    group: int = 1) -> dict[str, np.ndarray]:
    """Per-query and per-tile survivor sets for the ``row`` and ``cache`` dataflows (shapes as chunk_counts).

    - ``key_used`` (H, nq, Sk) bool: the keys some row of each query tile keeps (the rows a tile needs);
    - ``row_kept`` (H, Sq, nk) int32: keys each query keeps in each key tile;
    - ``row_shared`` (H, Sq, nk) int32: of those, the keys the previous query in the walk kept too (0 for the
      first query of a KV head);
    - ``prev_total`` (H, Sq) int32: how many keys that previous query kept in all (-1 for the first query:
      nothing to reuse), so a survivor buffer's capacity can be applied later without the masks.
    """
    heads, seq_q, seq_k = keep.shape
    _check_group(heads, group)
    keep = keep & valid
    nk = -(-seq_k // k_tile)
    tiles = _tiled(keep, q_tile, k_tile)
    key_used = tiles.any(axis=2).reshape(heads, tiles.shape[1], -1)[:, :, :seq_k]
    rows = _walk(keep, group)                          # (KV, group * Sq, Sk)
    prev = np.zeros_like(rows)
    prev[:, 1:] = rows[:, :-1]
    shared = rows & prev
    pad = nk * k_tile - seq_k

    def per_tile(m: np.ndarray) -> np.ndarray:
        m = np.pad(m, ((0, 0), (0, 0), (0, pad))) if pad else m
        return m.reshape(heads, seq_q, nk, k_tile).sum(axis=-1, dtype=np.int32)

    total = rows.sum(axis=-1, dtype=np.int32)
    prev_total = np.full_like(total, -1)
    prev_total[:, 1:] = total[:, :-1]
    return {"key_used": key_used, "row_kept": per_tile(keep), "row_shared": per_tile(shared.reshape(keep.shape)),
            "prev_total": prev_total.reshape(heads, seq_q)}
