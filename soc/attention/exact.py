"""Exact (digital) attention for one layer: softmax(scale * Q Kᵀ) V over the keys a query may see.

This is what the digital processor computes for the surviving pairs. Validity is causal (query at absolute
position ``i + query_offset`` sees keys ``j <= i + query_offset``) or full; a keep mask from the analog
pruning stage is ANDed with it, and the softmax runs over the kept keys only. Grouped-query attention maps
query head ``h`` to kv head ``h // (heads // kv_heads)``.

Shapes: q (H, Sq, D); k and v (KV, Sk, D); scores and masks (H, Sq, Sk). Arithmetic is float32.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _check_heads(heads: int, kv_heads: int) -> int:
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"heads: expected a multiple of kv_heads ({kv_heads}), got {heads}")
    return heads // kv_heads


def expand_kv(x: np.ndarray, heads: int) -> np.ndarray:
    """Repeat each kv head of ``x`` (KV, S, D) for the ``heads // KV`` query heads that share it."""
    group = _check_heads(heads, x.shape[0])
    return x if group == 1 else np.repeat(x, group, axis=0)


def kv_for_heads(x: np.ndarray, head_start: int, head_stop: int, heads: int) -> np.ndarray:
    """The kv rows serving query heads [head_start, head_stop): a view when there is no head sharing."""
    group = _check_heads(heads, x.shape[0])
    if group == 1:
        return x[head_start:head_stop]
    return x[np.arange(head_start, head_stop) // group]


def valid_mask(seq_q: int, seq_k: int, causal: bool, query_offset: int = 0) -> np.ndarray:
    """Bool (seq_q, seq_k): may query row i see key j? Causal: iff j <= i + query_offset."""
    if query_offset < 0:
        raise ValueError(f"query_offset: expected an integer >= 0, got {query_offset}")
    if not causal:
        mask = np.ones((seq_q, seq_k), dtype=bool)
    else:
        mask = np.arange(seq_k)[None, :] <= np.arange(seq_q)[:, None] + query_offset
    mask.setflags(write=False)  # read-only: the functional layer caches what it derives from a mask by identity
    return mask


class MaskMemo:
    """A one-entry memo of what is derived from validity masks: a run asks the same masks once per head. The
    masks are matched by identity, so only read-only ones are remembered (``valid_mask``'s are; a writable
    array's contents could change under the same identity); ``key`` holds the plain arguments."""

    __slots__ = ("_masks", "_key", "_value")

    def __init__(self) -> None:
        self._masks: tuple[np.ndarray, ...] = ()
        self._key: object = None
        self._value: object = None

    def get(self, masks: tuple[np.ndarray, ...], key: object, compute):
        if len(masks) == len(self._masks) and all(a is b for a, b in zip(masks, self._masks)) \
                and key == self._key:
            return self._value
        value = compute()
        if not any(m.flags.writeable for m in masks):
            self._masks, self._key, self._value = masks, key, value
        return value


class Scratch:
    """Named buffers kept from one head slice to the next. A fresh large array costs its page faults at every
    use (a 64 MB score matrix: ~16,000 of them); a buffer that is reused faults once per run. A name is a role,
    not one array: steps that are done with it before the next asks may share it, whatever their dtypes
    (``"mask"``: the calibration's band flags, then the keep mask; ``"temp"``: the noise of a block, then
    the calibration's second flags), so the buffers add no more to a run's peak memory than fresh arrays."""

    __slots__ = ("_buffers",)

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape``, the same memory as the last ``get(name)`` when it
        fits (whoever asked for ``name`` before must be done with it)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = self._buffers.get(name)
        if buf is None or buf.size < nbytes:
            buf = self._buffers[name] = np.empty(nbytes, np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)

    def held_bytes(self) -> dict[str, int]:
        """Bytes each role's buffer holds: what the roles add to a run's memory."""
        return {name: buf.nbytes for name, buf in self._buffers.items()}


def scratch_array(scratch: Scratch | None, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``scratch.get(name, shape, dtype)``, or a fresh array without a scratch."""
    return np.empty(shape, dtype) if scratch is None else scratch.get(name, shape, dtype)


#: Rows per block of a causal head (a block computes only the keys its last row may see: ~half the work).
CAUSAL_BLOCK_ROWS = 256
#: Pairs per block of any other head (at least CAUSAL_BLOCK_ROWS rows): a head up to this size is one block;
#: beyond it, its softmax buffers hold one block's rows (16 MiB of float32 scores a head), not the whole matrix.
BLOCK_PAIRS = 1 << 22
#: Pairs of one attention step (heads x block rows x keys): a step's buffers stay in a core's L2 cache.
HEAD_GROUP_PAIRS = 1 << 18

_BLOCKS = MaskMemo()
_ALL = MaskMemo()


def all_valid(valid: np.ndarray) -> bool:
    """Is every pair valid (so that ANDing a mask with ``valid`` changes nothing)? Once per read-only mask."""
    return _ALL.get((valid,), None, lambda: bool(valid.all()))


def row_blocks(valid: np.ndarray) -> list[tuple[int, int, int]]:
    """(first row, end row, keys) blocks covering a (Sq, Sk) score matrix. If each row's validity is a prefix
    (causal): blocks of :data:`CAUSAL_BLOCK_ROWS` rows, each reaching the last key its rows may see (pairs
    outside the blocks are invalid). Otherwise blocks of every key and about :data:`BLOCK_PAIRS` pairs (one
    block for a matrix up to that size)."""
    return _BLOCKS.get((valid,), None, lambda: _row_blocks(valid))


_PREFIX = MaskMemo()


def prefix_ends(valid: np.ndarray) -> np.ndarray | None:
    """How many keys each row sees (Sq,) when each row's validity is a prefix of the keys and some pair is
    invalid (causal), else None."""
    def compute() -> np.ndarray | None:
        if all_valid(valid):
            return None
        n_valid = valid.sum(axis=-1)
        return n_valid if np.array_equal(valid, np.arange(valid.shape[1])[None, :] < n_valid[:, None]) else None
    return _PREFIX.get((valid,), None, compute)


def _row_blocks(valid: np.ndarray) -> list[tuple[int, int, int]]:
    seq_q, seq_k = valid.shape
    n_valid = prefix_ends(valid)
    if n_valid is not None:
        return [(r0, min(r0 + CAUSAL_BLOCK_ROWS, seq_q), int(n_valid[r0:r0 + CAUSAL_BLOCK_ROWS].max()))
                for r0 in range(0, seq_q, CAUSAL_BLOCK_ROWS)]
    rows = max(CAUSAL_BLOCK_ROWS, BLOCK_PAIRS // max(seq_k, 1))
    return [(r0, min(r0 + rows, seq_q), seq_k) for r0 in range(0, seq_q, rows)]


def scores(q: np.ndarray, k: np.ndarray, scale: float) -> np.ndarray:
    """Exact logits scale * Q Kᵀ, float32 (H, Sq, Sk); ``k`` already matched to q's heads (H, Sk, D)."""
    q32 = np.asarray(q, dtype=np.float32)
    k32 = np.asarray(k, dtype=np.float32)
    logits = np.matmul(q32, k32.transpose(0, 2, 1))
    logits *= np.float32(scale)
    return logits


def softmax_masked(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row softmax over the True entries of ``mask``; masked entries get 0, and a row with none is all 0."""
    x = np.where(mask, logits, np.float32(-np.inf)).astype(np.float32, copy=False)
    row_max = x.max(axis=-1, keepdims=True)
    # An empty row has max -inf; shifting by 0 keeps exp(-inf) = 0 instead of producing NaN.
    row_max[~np.isfinite(row_max)] = 0.0
    x -= row_max
    np.exp(x, out=x)
    total = x.sum(axis=-1, keepdims=True)
    total[total == 0] = 1.0
    x /= total
    return x


def weighted_sum(probs: np.ndarray, v: np.ndarray) -> np.ndarray:
    """P V, float32 (H, Sq, D); ``v`` already matched to the heads of ``probs`` (H, Sk, D)."""
    return np.matmul(probs, np.asarray(v, dtype=np.float32))


def _check_layer(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"q, k, v: expected 3-D (heads, seq, head_dim) arrays, got shapes "
                         f"{q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"v: expected the shape of k {k.shape}, got {v.shape}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"k: expected head_dim {q.shape[2]} (that of q), got {k.shape[2]}")
    _check_heads(q.shape[0], k.shape[0])


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal: bool,
              query_offset: int = 0, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Attention of one layer, restricted to ``keep & valid`` when ``keep`` (H, Sq, Sk) is given.

    Returns (out (H, Sq, D), probs (H, Sq, Sk)), float32. A row with no kept key outputs zeros.
    """
    _check_layer(q, k, v)
    heads, seq_q, _ = q.shape
    seq_k = k.shape[1]
    mask = valid_mask(seq_q, seq_k, causal, query_offset)
    if keep is not None:
        if keep.shape != (heads, seq_q, seq_k):
            raise ValueError(f"keep: expected shape {(heads, seq_q, seq_k)}, got {keep.shape}")
        mask = keep & mask
    logits = scores(q, expand_kv(k, heads), scale)
    probs = softmax_masked(logits, mask)
    return weighted_sum(probs, expand_kv(v, heads)), probs


class PairOutputs(NamedTuple):
    """Exact and pruned attention of a head slice: each row's exact probability mass on its kept keys (H, Sq)
    float64 (on its valid keys without a keep mask), both outputs (H, Sq, D) and each row's exact argmax key."""

    mass_kept: np.ndarray
    out_exact: np.ndarray
    out_pruned: np.ndarray
    exact_arg: np.ndarray


class AttentionWork:
    """Exact and pruned attention of one head slice after another, in buffers allocated once.

    The pruned softmax reuses the exact one's exponentials: in a row whose exact argmax key is kept, the kept
    keys' maximum is the valid keys' maximum, so exp(logit - max) is the same number in both; only the other
    rows (top-1 misses and empty rows) are exponentiated again. A causal head runs in row blocks that stop at
    the last key their rows may see (:func:`row_blocks`): the rest is zero probability, never computed. The
    results equal :func:`softmax_masked` + :func:`weighted_sum` over ``valid`` and over ``keep`` bit for bit in
    one block, and to float32 rounding over several (a row's sums then run over its block's keys only). A
    block runs a few heads at a time (about :data:`HEAD_GROUP_PAIRS` pairs), each step in the same memory at
    the start of the scratch's buffers, so that its passes stay in a core's cache and the buffers hold one
    step's pairs.
    """

    def __init__(self, valid: np.ndarray) -> None:
        self.valid = valid
        self.blocks = row_blocks(valid)
        ends = prefix_ends(valid)
        # a causal mask is a prefix of each row: filling each row's tail is faster than a masked copy
        self.row_ends = None if ends is None else ends.tolist()
        # any other validity: the invalid pairs, masked by a copy (None: every pair is valid)
        self.invalid = None if ends is not None or all_valid(valid) else ~valid
        self.scratch = Scratch()  # the scoring, pruning and softmax buffers, kept across head slices

    def dense_keep(self, heads: int) -> np.ndarray:
        """keep = valid for ``heads`` heads (what the 'none' rule keeps)."""
        return np.broadcast_to(self.valid, (heads, *self.valid.shape)).copy()

    def _steps(self, heads: int):
        """(head slice, first row, end row, keys) of each step: one block's rows for a few of the heads."""
        for r0, r1, end in self.blocks:
            step = max(1, HEAD_GROUP_PAIRS // ((r1 - r0) * end))
            for g0 in range(0, heads, step):
                yield slice(g0, min(g0 + step, heads)), r0, r1, end

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
               keep: np.ndarray | None) -> PairOutputs:
        """Attention of q (H, Sq, D) over k, v (H, Sk, D): exact over valid pairs, pruned over ``keep``
        (None: no pruning, the pruned output is the exact one). The logits overwrite the scratch's approximate
        scores: ``keep`` must be made from them already."""
        heads, seq_q, _ = q.shape
        q32, k32, v32 = (np.asarray(a, np.float32) for a in (q, k, v))
        out_exact = np.empty((heads, seq_q, v32.shape[-1]), np.float32)
        out_pruned = out_exact if keep is None else np.empty_like(out_exact)
        exact_arg = np.empty((heads, seq_q), np.int64)
        mass = np.empty((heads, seq_q), np.float64)
        for g, r0, r1, end in self._steps(heads):
            # keys past ``end`` no row of the block may see: never computed. The logits take the start of the
            # approximate scores' buffer (done with), each step the same cache-warm memory.
            xb = self.scratch.get("scores", (g.stop - g.start, r1 - r0, end), np.float32)
            np.matmul(q32[g, r0:r1], k32[g, :end].transpose(0, 2, 1), out=xb)
            xb *= np.float32(scale)
            if self.row_ends is not None:
                for row in range(r0, r1):
                    xb[:, row - r0, self.row_ends[row]:] = -np.inf
            elif self.invalid is not None:
                np.copyto(xb, np.float32(-np.inf), where=self.invalid[r0:r1, :end])
            arg = exact_arg[g, r0:r1, None]
            arg[...] = xb.argmax(axis=-1)[..., None]
            row_max = np.take_along_axis(xb, arg, axis=-1)  # the max itself, without a second pass
            if keep is None:  # the 'none' rule keeps the valid pairs
                kb = np.broadcast_to(self.valid[r0:r1, :end], xb.shape).copy()
            else:
                kb = keep[g, r0:r1, :end]
            redo = saved = None
            if keep is not None:
                hit = np.take_along_axis(kb, arg, axis=-1)[..., 0]
                redo = np.nonzero(~hit)  # (heads, rows) of the rows whose exact argmax key was pruned
                saved = xb[redo]
            _exp_shifted(xb, row_max)
            if keep is None:
                _normalize(xb)
                mass[g, r0:r1] = kept_mass(xb, kb)
                out_exact[g, r0:r1] = weighted_sum(xb, v32[g, :end])
                continue
            pb = self.scratch.get("pruned", xb.shape, np.float32)
            np.multiply(xb, kb, out=pb)
            if redo[0].size:
                rows = np.where(kb[redo], saved, np.float32(-np.inf))
                _exp_shifted(rows)
                pb[redo] = rows
            _normalize(pb)
            _normalize(xb)
            mass[g, r0:r1] = kept_mass(xb, kb)
            out_exact[g, r0:r1] = weighted_sum(xb, v32[g, :end])
            out_pruned[g, r0:r1] = weighted_sum(pb, v32[g, :end])
        return PairOutputs(mass, out_exact, out_pruned, exact_arg)


def kept_mass(probs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Each row's probability on the kept keys (H, Sq), summed in float64: probs (H, Sq, Sk), keep bool."""
    return np.einsum("hqk,hqk->hq", probs, keep, dtype=np.float64, casting="unsafe")


def _exp_shifted(x: np.ndarray, row_max: np.ndarray | None = None) -> None:
    """x <- exp(x - row max) in place, as :func:`softmax_masked` does before normalising (``row_max``: the
    rows' maxima, (..., 1), when the caller has them)."""
    if row_max is None:
        row_max = x.max(axis=-1, keepdims=True)
    row_max[~np.isfinite(row_max)] = 0.0
    x -= row_max
    np.exp(x, out=x)


def _normalize(x: np.ndarray) -> None:
    total = x.sum(axis=-1, keepdims=True)
    total[total == 0] = 1.0
    x /= total
