"""Per-chunk work counts: the bridge from the functional masks to the timing model.

The score matrix of each (layer, head) is cut into chunks of ``q_tile`` query rows x ``k_tile`` keys (the
last chunk of a row or column of chunks may be partial). For each chunk the hardware needs to know how many
rows and keys it spans, how many pairs are causally valid (what the CIM must score) and kept (what the digital
side computes), which K/V rows the digital side needs (``union_keys``), which of those were not already needed
by an earlier query tile of the same head and key tile (``new_keys``: the fetch when K/V stays resident on
chip), and how many rows keep anything (``rows_kept``). For K/V rows that stay in SRAM from one query tile to
the next, ``prev_union_keys`` counts the keys the previous query tile of the same head and key tile needed and
``shared_prev_keys`` those it shares with this one (adjacent queries share most survivors).

All counts come from one padded reshape (H, nq, q_tile, nk, k_tile) of the masks; no loop over chunks.
"""

from __future__ import annotations

import numpy as np

COUNT_KEYS = ("q_rows", "k_cols", "pairs_valid", "pairs_kept", "union_keys", "new_keys", "rows_kept",
              "prev_union_keys", "shared_prev_keys")


def tile_counts(n: int, tile: int) -> np.ndarray:
    """Sizes of the tiles that cover ``n`` items with tiles of ``tile`` (the last may be partial)."""
    starts = np.arange(0, n, tile)
    return np.minimum(tile, n - starts).astype(np.int64)


def _tiled(mask: np.ndarray, q_tile: int, k_tile: int) -> np.ndarray:
    """(H, Sq, Sk) -> (H, nq, q_tile, nk, k_tile), padding with False (a view when the tiles fit exactly)."""
    heads, seq_q, seq_k = mask.shape
    nq, nk = -(-seq_q // q_tile), -(-seq_k // k_tile)
    if seq_q % q_tile or seq_k % k_tile:
        padded = np.zeros((heads, nq * q_tile, nk * k_tile), dtype=bool)
        padded[:, :seq_q, :seq_k] = mask
        mask = padded
    return mask.reshape(heads, nq, q_tile, nk, k_tile)


def chunk_counts(keep: np.ndarray, valid: np.ndarray, q_tile: int, k_tile: int) -> dict[str, np.ndarray]:
    """Counts per chunk for a keep mask (H, Sq, Sk) and validity (Sq, Sk) or (H, Sq, Sk).

    Returns int64 arrays of shape (H, nq, nk) under :data:`COUNT_KEYS`. ``keep`` is ANDed with ``valid``.
    """
    if keep.ndim != 3:
        raise ValueError(f"keep: expected a (heads, seq_q, seq_k) mask, got shape {keep.shape}")
    heads, seq_q, seq_k = keep.shape
    if valid.shape not in ((seq_q, seq_k), keep.shape):
        raise ValueError(f"valid: expected shape {(seq_q, seq_k)} or {keep.shape}, got {valid.shape}")
    for name, tile in (("q_tile", q_tile), ("k_tile", k_tile)):
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise ValueError(f"{name}: expected a positive integer, got {tile!r}")
    keep = keep & valid
    q_sizes, k_sizes = tile_counts(seq_q, q_tile), tile_counts(seq_k, k_tile)
    nq, nk = len(q_sizes), len(k_sizes)
    shape = (heads, nq, nk)

    valid3 = valid[None] if valid.ndim == 2 else valid
    pairs_valid = _tiled(valid3, q_tile, k_tile).sum(axis=(2, 4), dtype=np.int64)
    tiles = _tiled(keep, q_tile, k_tile)
    pairs_kept = tiles.sum(axis=(2, 4), dtype=np.int64)
    key_used = tiles.any(axis=2)                      # (H, nq, nk, k_tile): kept by some row of the chunk
    row_used = tiles.any(axis=4)                      # (H, nq, q_tile, nk): row keeps some key in the chunk
    # A key is new in query tile i if no earlier query tile of the same head and key tile kept it.
    seen_before = np.zeros_like(key_used)
    if nq > 1:
        seen_before[:, 1:] = np.logical_or.accumulate(key_used, axis=1)[:, :-1]
    new = key_used & ~seen_before
    prev_used = np.zeros_like(key_used)
    if nq > 1:
        prev_used[:, 1:] = key_used[:, :-1]
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
