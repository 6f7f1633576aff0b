"""What each tile asks of the hardware, computed from the functional layer's per-chunk counts (numpy only).

A chunk is one (layer, head, query tile, key tile) block of the score matrix, in the order the SoC walks them:
query tiles outer, key tiles inner (flash-attention order, so a query tile's running output stays on chip).
This module turns counts (kept pairs, union of kept keys, newly needed keys) into bytes per transfer and
operations per block; the blocks turn those into time and energy. The same function gives the dense
counterfactual's traffic, so savings are computed from one rule.

GQA: K/V rows and the keys' MSBs belong to KV heads. A KV head's query heads run one after another on the same
CIM/digital pair (soc.system assigns whole groups), so resident K/V, on-chip MSBs, a single-tile array load and
the row/cache dataflows share what the group shares. The row and cache dataflows need per-query survivor sets
(soc.attention.plan.survivor_tables); their per-chunk fetches are computed here, vectorized per KV head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from soc.attention.table import dense_group_table
from soc.attention.plan import survivor_tables
from soc.config.schema import SocConfig
from soc.errors import WiringError
from soc.rules import RULE_CODES, scoring_passes


@dataclass(frozen=True)
class Shape:
    """The workload's attention shape, as the dataflow needs it."""
    layers: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    kv_heads: int = 0  # 0: same as heads

    def __post_init__(self) -> None:
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)


def key_tile_keys(cfg: SocConfig, head_dim: int) -> int:
    tile = cfg.cim.key_tile(head_dim)
    if tile < 1:
        raise WiringError(f"cim: one key of head_dim {head_dim} x {cfg.cim.key_bits} bits needs more than the "
                          f"array's {cfg.cim.array_cols} columns of {cfg.cim.array_rows} rows")
    return tile


@dataclass(frozen=True)
class Placement:
    """Where K/V and the keys' MSBs live for one head.

    ``kv``: 'resident' (each K/V row fetched from DRAM at most once per KV head), 'stream' (fetched for every
    query tile that keeps it), 'reuse' (stream, but the previous query tile's rows stay in ``kv_cache_bytes``
    of SRAM and are not fetched again while both tiles' rows fit), 'row' (per query, the kept rows the previous
    query did not keep, from a survivor buffer of ``survivor_rows``) or 'cache' (an LRU cache of
    ``kv_cache_bytes``). ``msb_on_chip``: the keys' MSBs are fetched once per KV head into SRAM and the CIM array
    is reloaded from there; otherwise every load reads them from DRAM.
    """
    kv: str
    msb_on_chip: bool
    sram_bytes_needed: int
    kv_cache_bytes: int = 0
    survivor_rows: int = 0

    @property
    def needs_survivors(self) -> bool:
        return self.kv in ("row", "cache")


def kv_placement(cfg: SocConfig, shape: Shape) -> Placement:
    """Where K/V and the MSBs of one KV head go in SRAM; WiringError when the dataflow does not fit.

    Every placement holds one query tile (inputs and outputs). resident adds the KV head's K/V; row its survivor
    buffer (K/V rows arrive into it, so it must hold two rows); stream, reuse and cache a double buffer of two
    key tiles of K/V, and reuse/cache use all the SRAM the query tile and the MSBs leave as K/V storage. The
    keys' MSBs stay on chip when they fit beside that.
    """
    elem = cfg.dataflow.element_bytes
    hd = shape.head_dim
    row_bytes = 2 * hd * elem
    q_tile = cfg.dataflow.q_tile_rows * hd * (elem + cfg.dataflow.output_bytes)
    head_kv = shape.seq_k * row_bytes
    k_tile = key_tile_keys(cfg, hd)
    double_buffer = 2 * min(k_tile, shape.seq_k) * row_bytes
    msb = -(-shape.seq_k * hd * cfg.cim.key_bits // 8) if cfg.cim.enabled else 0
    cap = cfg.sram.capacity_bytes
    want = cfg.dataflow.kv_placement
    if want == "row":
        buffer = cfg.dataflow.survivor_buffer_bytes
        if buffer < 2 * row_bytes or q_tile + buffer > cap:
            raise WiringError(f"dataflow.survivor_buffer_bytes: expected at least two K/V rows ({2 * row_bytes} "
                              f"bytes) and at most the {cap - q_tile} bytes of SRAM one query tile leaves, "
                              f"got {buffer}")
        used = q_tile + buffer
        msb_on_chip = cfg.cim.enabled and used + msb <= cap
        return Placement(kv="row", msb_on_chip=msb_on_chip, sram_bytes_needed=used + (msb if msb_on_chip else 0),
                         survivor_rows=buffer // row_bytes)
    if q_tile + double_buffer > cap:
        raise WiringError(f"sram: {cap} bytes cannot hold one query tile and two key tiles of K/V "
                          f"({q_tile + double_buffer} bytes); raise sram.banks or sram.bank_bytes or lower "
                          f"dataflow.q_tile_rows")
    fits = q_tile + head_kv + msb <= cap
    if want == "resident" and not fits:
        raise WiringError(f"dataflow.kv_placement: resident needs {q_tile + head_kv + msb} bytes of SRAM for "
                          f"one head, have {cap}")
    kv = ("resident" if fits else "stream") if want == "auto" else want
    used = q_tile + (head_kv if kv == "resident" else double_buffer)
    msb_on_chip = cfg.cim.enabled and used + msb <= cap
    needed = used + (msb if msb_on_chip else 0)
    # reuse, cache: whatever the query tile and the MSBs leave holds K/V rows (at least the double buffer)
    cache = cap - q_tile - (msb if msb_on_chip else 0) if kv in ("reuse", "cache") else 0
    if kv == "cache":
        needed = cap
    return Placement(kv=kv, msb_on_chip=msb_on_chip, sram_bytes_needed=needed, kv_cache_bytes=cache)


def rule_codes(cfg: SocConfig, layers: int) -> np.ndarray:
    """Rule code of each layer (what the CIM must do), honouring per-layer overrides and a disabled CIM."""
    if not cfg.cim.enabled:
        return np.zeros(layers, dtype=np.int64)
    codes = np.full(layers, RULE_CODES[cfg.pruning.rule], dtype=np.int64)
    for layer, over in cfg.pruning.per_layer.items():
        if over.rule is not None and 0 <= layer < layers:
            codes[layer] = RULE_CODES[over.rule]
    return codes


def _first_occurrence(*keys: np.ndarray) -> np.ndarray:
    """True where a combination of keys appears for the first time (chunks are in walk order)."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=bool)
    combo = np.ravel_multi_index(keys, tuple(int(k.max()) + 1 for k in keys))
    _, first = np.unique(combo, return_index=True)
    out = np.zeros(n, dtype=bool)
    out[first] = True
    return out


@dataclass(frozen=True)
class AddressMap:
    """Where each tensor lives in DRAM: regions for Q, K, V, the keys' MSBs and the output, one after another,
    each laid out [layer][head][token][dim]; regions start on 1 MiB boundaries."""
    q_base: int
    k_base: int
    v_base: int
    msb_base: int
    out_base: int

    @staticmethod
    def build(cfg: SocConfig, shape: Shape, kv_heads: int) -> "AddressMap":
        elem, hd = cfg.dataflow.element_bytes, shape.head_dim
        align = lambda n: -(-int(n) // (1 << 20)) * (1 << 20)  # noqa: E731
        q = align(shape.layers * shape.heads * shape.seq_q * hd * elem)
        kv = align(shape.layers * kv_heads * shape.seq_k * hd * elem)
        msb = align(shape.layers * kv_heads * shape.seq_k * hd * cfg.cim.key_bits / 8)
        return AddressMap(q_base=0, k_base=q, v_base=q + kv, msb_base=q + 2 * kv, out_base=q + 2 * kv + msb)


def addresses(chunks: dict[str, np.ndarray], cfg: SocConfig, shape: Shape, kv_heads: int,
              amap: AddressMap) -> dict[str, np.ndarray]:
    """DRAM byte addresses of each chunk's query tile, key tile (K, V, MSBs) and output tile (int64)."""
    elem, hd = cfg.dataflow.element_bytes, shape.head_dim
    k_tile = key_tile_keys(cfg, hd)
    layer, head = chunks["layer"].astype(np.int64), chunks["head"].astype(np.int64)
    kvh = head // max(1, shape.heads // kv_heads)
    q_row = (layer * shape.heads + head) * shape.seq_q + chunks["qtile"] * cfg.dataflow.q_tile_rows
    k_row = (layer * kv_heads + kvh) * shape.seq_k + chunks["ktile"] * k_tile
    return {
        "q_addr": amap.q_base + q_row * hd * elem,
        "out_addr": amap.out_base + q_row * hd * cfg.dataflow.output_bytes,
        "k_addr": amap.k_base + k_row * hd * elem,
        "v_addr": amap.v_base + k_row * hd * elem,
        "msb_addr": amap.msb_base + (k_row * hd * cfg.cim.key_bits) // 8,
        "kv_span_bytes": chunks["k_cols"] * hd * elem,
    }


def lru_misses(used: np.ndarray, capacity_rows: int, budget: int = 1 << 23) -> np.ndarray:
    """Misses of an LRU cache of ``capacity_rows`` K/V rows, per access (bool, the shape of ``used``).

    ``used`` (B, A, S): B independent streams (KV heads: no row is shared between them), A steps (query tiles in
    walk order), S keys; step a touches its used keys in ascending order (key tile by key tile). A touch hits
    iff fewer than ``capacity_rows`` other rows were touched since the row's previous touch (LRU stack
    distance): the rows touched in the steps strictly between, those after it in its previous step and those
    before it in this one. Counted step by step with one-hot histograms over the previous-touch step, vectorized
    over keys and over as many streams as ``budget`` cells allow.
    """
    streams, steps, keys = used.shape
    last = np.where(used, np.arange(steps)[None, :, None], -1)
    prev = np.full_like(last, -1)
    prev[:, 1:] = np.maximum.accumulate(last, axis=1)[:, :-1]   # last step before a that touched the key
    miss = used.copy()
    per = max(1, budget // max(1, keys * (steps + 1)))
    for b0 in range(0, streams, per):
        for a in range(1, steps):                                  # step 0 only misses
            p1 = prev[b0:b0 + per, a] + 1                          # (b, S); 0: never touched before
            u = used[b0:b0 + per, a]
            onehot = p1[..., None] == np.arange(a + 1)             # (b, S, a + 1)
            hist = onehot.sum(axis=1, dtype=np.int32)              # keys per previous-touch step
            later = np.cumsum(hist[:, ::-1], axis=-1, dtype=np.int32)[:, ::-1] - hist
            mid = np.take_along_axis(later, p1, axis=1)            # touched strictly in between
            after = np.cumsum(onehot[:, ::-1], axis=1, dtype=np.int32)[:, ::-1] - onehot
            same_after = np.take_along_axis(after, p1[..., None], axis=2)[..., 0]
            touched = onehot & u[..., None]
            before = np.cumsum(np.cumsum(touched, axis=1, dtype=np.int32) - touched, axis=2, dtype=np.int32)
            now_before = np.take_along_axis(before, p1[..., None], axis=2)[..., 0]
            hit = u & (p1 > 0) & (mid + same_after + now_before < capacity_rows)
            miss[b0:b0 + per, a] &= ~hit
    return miss


def _per_tile(a: np.ndarray, k_tile: int) -> np.ndarray:
    """Sum the last axis (keys) per key tile."""
    pad = -a.shape[-1] % k_tile
    if pad:
        a = np.concatenate([a, np.zeros((*a.shape[:-1], pad), dtype=a.dtype)], axis=-1)
    return a.reshape(*a.shape[:-1], -1, k_tile).sum(axis=-1)


def survivor_fetch_rows(survivors: dict[str, np.ndarray], placement: Placement, shape: Shape, q_tile: int,
                        k_tile: int, row_bytes: int) -> np.ndarray:
    """K/V rows fetched per (layer, head, query tile, key tile) under the row or cache dataflow."""
    if placement.kv == "row":
        reuse = (survivors["prev_total"] >= 0) & (survivors["prev_total"] <= placement.survivor_rows)
        rows = survivors["row_kept"] - survivors["row_shared"] * reuse[..., None]   # (L, H, Sq, nk)
        layers, heads, seq_q, nk = rows.shape
        pad = -seq_q % q_tile
        if pad:
            rows = np.concatenate([rows, np.zeros((layers, heads, pad, nk), dtype=rows.dtype)], axis=2)
        return rows.reshape(layers, heads, -1, q_tile, nk).sum(axis=3)
    used = survivors["key_used"]                                                     # (L, H, nq, Sk)
    layers, heads, nq, seq_k = used.shape
    group = heads // shape.kv_heads
    walk = used.reshape(layers * shape.kv_heads, group * nq, seq_k)
    capacity = placement.kv_cache_bytes // row_bytes
    miss = lru_misses(walk, capacity).reshape(used.shape)
    return _per_tile(miss, k_tile)


def _fetched_keys(chunks: dict[str, np.ndarray], first_k: np.ndarray, placement: Placement,
                  row_bytes: int, survivor_rows: np.ndarray | None = None) -> np.ndarray:
    """K/V rows each chunk fetches from DRAM under the placement."""
    if placement.needs_survivors:  # the survivors' layer axis holds the chunks' layers, in order
        at = np.searchsorted(np.unique(chunks["layer"]), chunks["layer"])
        return survivor_rows[at, chunks["head"], chunks["qtile"], chunks["ktile"]]
    if placement.kv == "resident":
        return chunks["new_keys"]
    union = chunks["union_keys"]
    if placement.kv == "stream" or len(union) == 0:
        return union
    # reuse: a query tile keeps the previous tile's rows when both tiles' rows fit in the cache together
    both = union + chunks["prev_union_keys"] - chunks["shared_prev_keys"]
    starts = np.flatnonzero(first_k)
    fits = np.add.reduceat(both, starts) * row_bytes <= placement.kv_cache_bytes
    fits = np.repeat(fits, np.diff(np.append(starts, len(union))))
    return np.where(fits, union - chunks["shared_prev_keys"], union)


def demand(chunks: dict[str, np.ndarray], cfg: SocConfig, shape: Shape, placement: Placement,
           survivors: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Bytes and operations per chunk (float64 arrays of the chunk count). ``survivors``
    (FunctionalResult.survivors) is needed by the row and cache dataflows."""
    n = len(chunks["layer"])
    hd = shape.head_dim
    elem = cfg.dataflow.element_bytes
    layer, head, qtile, ktile = chunks["layer"], chunks["head"], chunks["qtile"], chunks["ktile"]
    group = shape.heads // shape.kv_heads
    kv_id = layer * shape.kv_heads + chunks.get("kv_head", head // group)
    head_id = layer * shape.heads + head
    new_head = np.ones(n, dtype=bool)
    new_head[1:] = head_id[1:] != head_id[:-1]
    new_kv = np.ones(n, dtype=bool)
    new_kv[1:] = kv_id[1:] != kv_id[:-1]
    first_k = new_head.copy()
    first_k[1:] |= qtile[1:] != qtile[:-1]
    last_k = np.ones(n, dtype=bool)
    last_k[:-1] = first_k[1:]
    q_rows = chunks["q_rows"].astype(np.float64)
    k_cols = chunks["k_cols"].astype(np.float64)

    k_tile = key_tile_keys(cfg, hd)
    tiles_per_head = np.full(n, -(-shape.seq_k // k_tile), dtype=np.int64)
    codes = rule_codes(cfg, shape.layers)[layer]
    cim_on = cfg.cim.enabled
    zeros = np.zeros(n)
    # the array is rewritten for every chunk when a head has several key tiles (query-outer order), else once
    # per KV head (a group's query heads score the same keys); a margin rule over several tiles scores every
    # chunk twice, so it loads every tile twice
    passes = scoring_passes(codes, tiles_per_head)
    loads = np.where(tiles_per_head > 1, passes, new_kv.astype(np.float64)) if cim_on else zeros
    msb_bytes_per_key = hd * cfg.cim.key_bits / 8.0
    first_use = _first_occurrence(kv_id, ktile)
    survivor_rows = None
    if placement.needs_survivors:
        if survivors is None:
            raise WiringError(f"dataflow.kv_placement: {placement.kv} needs the functional pass's survivor sets")
        survivor_rows = survivor_fetch_rows(survivors, placement, shape, cfg.dataflow.q_tile_rows, k_tile,
                                            2 * hd * elem)
    fetched = _fetched_keys(chunks, first_k, placement, 2 * hd * elem, survivor_rows)
    # row: each kept key of each query is checked against the survivor buffer; cache: each needed row's tag
    lookups = {"row": chunks["pairs_kept"], "cache": chunks["union_keys"]}.get(placement.kv, zeros)
    q_load = first_k * q_rows * hd * elem
    kmsb_load = loads * k_cols * msb_bytes_per_key
    return {
        "first_k": first_k, "last_k": last_k, "rule_code": codes, "tiles_per_head": tiles_per_head,
        "array_loads": loads,
        "q_load_bytes": q_load,
        "q_msb_bytes": first_k * q_rows * hd * cfg.cim.query_bits / 8.0 if cim_on else zeros,
        # keys' MSBs: DRAM -> SRAM once per (KV head, key tile) when they stay on chip
        "kmsb_fetch_bytes": first_use * k_cols * msb_bytes_per_key if cim_on and placement.msb_on_chip else zeros,
        "kmsb_load_bytes": kmsb_load,
        "array_write_bits": kmsb_load * 8.0,
        "mask_bytes": q_rows * k_cols / 8.0 if cim_on else zeros,
        "kv_fetch_bytes": fetched * 2.0 * hd * elem,
        "kv_fetch_rows": fetched.astype(np.float64),
        "kv_lookups": np.asarray(lookups, dtype=np.float64),
        "kv_read_bytes": chunks["union_keys"] * 2.0 * hd * elem + q_load,
        "out_bytes": last_k * q_rows * hd * cfg.dataflow.output_bytes,
        "cim_macs": (q_rows * k_cols * hd * passes) if cim_on else zeros,
        "cim_compares": (q_rows * k_cols * passes) if cim_on else zeros,
        "digital_macs": 2.0 * chunks["pairs_kept"] * hd + chunks["rows_kept"] * hd,
        "digital_exps": chunks["pairs_kept"].astype(np.float64),
    }


def traffic_totals(d: dict[str, np.ndarray], placement: Placement) -> dict[str, float]:
    """DRAM and SRAM bytes implied by a demand table (the simulation must count exactly these)."""
    s = {k: float(v.sum()) for k, v in d.items() if k.endswith("_bytes")}
    on_chip = placement.msb_on_chip and s["kmsb_load_bytes"] > 0
    msb_from_sram = s["kmsb_load_bytes"] if on_chip else 0.0
    msb_from_dram = s["kmsb_fetch_bytes"] if on_chip else s["kmsb_load_bytes"]
    return {
        "dram_read_bytes": s["q_load_bytes"] + msb_from_dram + s["kv_fetch_bytes"],
        "dram_write_bytes": s["out_bytes"],
        "sram_read_bytes": s["q_msb_bytes"] + msb_from_sram + s["kv_read_bytes"] + s["out_bytes"],
        "sram_write_bytes": s["q_load_bytes"] + s["kmsb_fetch_bytes"] + s["kv_fetch_bytes"] + s["out_bytes"],
    }


#: dense_best skips cache candidates whose LRU count would exceed this many histogram cells per KV head
DENSE_BEST_LRU_CELLS = 1 << 25


def _dense_group(valid: np.ndarray, cfg: SocConfig, shape: Shape, placement: Placement,
                 tables: dict | None = None) -> dict[str, float]:
    """Dense traffic of the whole workload: every (layer, KV head) sees the same valid pairs, so one group's
    traffic (its query heads in sequence) times the number of groups. ``tables``: a memo of the group's chunk
    table and survivor sets by tile shape (they depend on the tiles, not on the placement)."""
    group = shape.heads // shape.kv_heads
    q_tile, k_tile = cfg.dataflow.q_tile_rows, key_tile_keys(cfg, shape.head_dim)
    one = dataclasses.replace(shape, layers=1, heads=group, kv_heads=1)
    tables = {} if tables is None else tables
    if ("chunks", q_tile, k_tile) not in tables:
        tables[("chunks", q_tile, k_tile)] = dense_group_table(valid, q_tile, k_tile, group)
    chunks = tables[("chunks", q_tile, k_tile)]
    survivors = None
    if placement.needs_survivors:
        if ("survivors", q_tile, k_tile) not in tables:
            keep = np.broadcast_to(valid, (group, *valid.shape))
            tables[("survivors", q_tile, k_tile)] = {
                k: v[None] for k, v in survivor_tables(keep, valid, q_tile, k_tile, group).items()}
        survivors = tables[("survivors", q_tile, k_tile)]
    totals = traffic_totals(demand(chunks, cfg, one, placement, survivors), placement)
    groups = shape.layers * shape.kv_heads
    return {k: v * groups for k, v in totals.items()}


def dense_traffic(func, cfg: SocConfig, shape: Shape, placement: Placement) -> dict[str, float]:
    """``traffic.dense``: the SoC ``cfg`` (pruning off) with the run's own placement, on the run's validity."""
    return _dense_group(func.valid, cfg, shape, placement)


def _dense_floor_bytes(needs: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: SocConfig, shape: Shape,
                       placement: Placement) -> float:
    """A lower bound on ``_dense_group``'s DRAM bytes (read + write) from the validity alone. ``needs``: per
    query tile its rows and the keys some row needs (``|U_i|``), and per query the keys it needs (``|K_q|``).
    Every live query tile is loaded and written back once. A step of the walk needing ``|U_i|`` rows finds at
    most ``C`` of them on chip, whatever the policy: stream C = 0; reuse and cache C = the rows of
    ``kv_cache_bytes``; row, per query, C = the survivor buffer; resident: all. The MSBs (>= 0) are left out."""
    q_rows, union, per_query = needs
    hd, elem = shape.head_dim, cfg.dataflow.element_bytes
    if placement.kv == "resident":  # (not pruned: its exact answer is the early one)
        rows = 0
    elif placement.kv == "row":
        rows = np.maximum(per_query - placement.survivor_rows, 0).sum()
    else:
        held = placement.kv_cache_bytes // (2 * hd * elem) if placement.kv in ("reuse", "cache") else 0
        rows = np.maximum(union - held, 0).sum()
    live = q_rows[union > 0].sum()
    group = shape.heads // shape.kv_heads
    per_group = live * hd * (elem + cfg.dataflow.output_bytes) + rows * 2.0 * hd * elem
    return float(per_group) * group * shape.layers * shape.kv_heads


def _query_tile_needs(valid: np.ndarray, q_tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each query tile and the keys some row of it needs (validity (Sq, Sk))."""
    seq_q = valid.shape[0]
    nq = -(-seq_q // q_tile)
    padded = np.pad(valid, ((0, nq * q_tile - seq_q), (0, 0))) if nq * q_tile > seq_q else valid
    rows = np.minimum(q_tile, seq_q - np.arange(0, seq_q, q_tile))
    return rows, padded.reshape(nq, q_tile, -1).any(axis=1).sum(axis=1)


def dense_best_traffic(func, cfg: SocConfig, shape: Shape, prune: bool = True) -> dict:
    """``traffic.dense_best``: the dense SoC ``cfg`` with the dataflow that minimises its DRAM bytes for the same
    SRAM. K/V resident, when a KV head fits beside the configured query tile, fetches each row once: the
    minimum, taken at once. Otherwise every placement (row with all the SRAM the query tile leaves as survivor
    buffer) at every power-of-two query tile and key tiles of 16, 64 and the configured keys (a dense SoC has
    no CIM array to fix its key tile) that fit. Returns the four traffic totals plus the chosen
    ``kv_placement``, ``q_tile_rows`` and ``key_tile_keys``. ``prune``: skip a trial whose lower bound
    (``_dense_floor_bytes``) cannot beat the best found (the answer is the exhaustive search's)."""
    valid = func.valid
    seq_q, seq_k = valid.shape
    hd, elem = shape.head_dim, cfg.dataflow.element_bytes
    group = shape.heads // shape.kv_heads
    cols_per_key = -(-hd * cfg.cim.key_bits // cfg.cim.array_rows)
    # the configured tiles first: among equal traffic they are kept
    tiles = [cfg.dataflow.q_tile_rows, *sorted({seq_q, *(1 << i for i in range(seq_q.bit_length()))}
                                               - {cfg.dataflow.q_tile_rows})]
    arrays = [cfg.cim.array_cols, *sorted({16 * cols_per_key, 64 * cols_per_key} - {cfg.cim.array_cols})]
    per_query = valid.sum(axis=1)
    needs: dict[int, tuple] = {}  # per query tile: its rows and keys needed (for the floors)
    best: dict | None = None
    for cols in arrays:
        for q_tile in tiles:
            steps = group * -(-seq_q // q_tile)
            tables: dict = {}  # this tile shape's group table and survivor sets, shared by its placements
            for kv in ("resident", "stream", "reuse", "row", "cache"):
                if kv == "cache" and steps * seq_k * (steps + 1) > DENSE_BEST_LRU_CELLS:
                    continue
                leftover = cfg.sram.capacity_bytes - q_tile * hd * (elem + cfg.dataflow.output_bytes)
                flow = dataclasses.replace(cfg.dataflow, q_tile_rows=q_tile, kv_placement=kv,
                                           survivor_buffer_bytes=max(0, leftover))
                trial = dataclasses.replace(cfg, dataflow=flow, cim=dataclasses.replace(cfg.cim, array_cols=cols))
                try:
                    placement = kv_placement(trial, shape)
                except WiringError:
                    continue
                best_dram = None if best is None else best["dram_read_bytes"] + best["dram_write_bytes"]
                if prune and best_dram is not None and kv != "resident":
                    if q_tile not in needs:
                        needs[q_tile] = (*_query_tile_needs(valid, q_tile), per_query)
                    # a margin for rounding: only a trial that surely cannot beat the best is skipped
                    if _dense_floor_bytes(needs[q_tile], trial, shape, placement) > best_dram * (1 + 1e-9):
                        continue
                totals = _dense_group(valid, trial, shape, placement, tables)
                dram = totals["dram_read_bytes"] + totals["dram_write_bytes"]
                if best_dram is None or dram < best_dram:
                    best = {**totals, "kv_placement": kv, "q_tile_rows": q_tile,
                            "key_tile_keys": key_tile_keys(trial, hd)}
                if kv == "resident" and best["kv_placement"] == "resident":
                    return best
    if best is None:
        raise WiringError(f"sram: {cfg.sram.capacity_bytes} bytes hold no dense dataflow for head_dim {hd}")
    return best
