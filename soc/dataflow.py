"""What each tile asks of the hardware, computed from the functional layer's per-chunk counts (numpy only).

A chunk is one (layer, head, query tile, key tile) block of the score matrix, in the order the SoC walks them:
query tiles outer, key tiles inner (flash-attention order, so a query tile's running output stays on chip).
This module turns counts (kept pairs, union of kept keys, newly needed keys) into bytes per transfer and
operations per block; the blocks turn those into time and energy. The same function gives the dense
counterfactual's traffic, so savings are computed from one rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

    ``kv``: 'resident' (each K/V row fetched from DRAM at most once per head), 'stream' (fetched for every
    query tile that keeps it) or 'reuse' (stream, but the previous query tile's rows stay in ``kv_cache_bytes``
    of SRAM and are not fetched again while both tiles' rows fit). ``msb_on_chip``: the keys' MSBs are fetched
    once per head into SRAM and the CIM array is reloaded from there; otherwise every load reads them from DRAM.
    """
    kv: str
    msb_on_chip: bool
    sram_bytes_needed: int
    kv_cache_bytes: int = 0


def kv_placement(cfg: SocConfig, shape: Shape) -> Placement:
    elem = cfg.dataflow.element_bytes
    hd = shape.head_dim
    q_tile = cfg.dataflow.q_tile_rows * hd * (elem + cfg.dataflow.output_bytes)
    head_kv = 2 * shape.seq_k * hd * elem
    k_tile = key_tile_keys(cfg, hd)
    double_buffer = 2 * 2 * min(k_tile, shape.seq_k) * hd * elem
    msb = -(-shape.seq_k * hd * cfg.cim.key_bits // 8) if cfg.cim.enabled else 0
    cap = cfg.sram.capacity_bytes
    if q_tile + double_buffer > cap:
        raise WiringError(f"sram: {cap} bytes cannot hold one query tile and two key tiles of K/V "
                          f"({q_tile + double_buffer} bytes); raise sram.banks or sram.bank_bytes or lower "
                          f"dataflow.q_tile_rows")
    want = cfg.dataflow.kv_placement
    fits = q_tile + head_kv + msb <= cap
    if want == "resident" and not fits:
        raise WiringError(f"dataflow.kv_placement: resident needs {q_tile + head_kv + msb} bytes of SRAM for "
                          f"one head, have {cap}")
    kv = ("resident" if fits else "stream") if want == "auto" else want
    used = q_tile + (head_kv if kv == "resident" else double_buffer)
    msb_on_chip = cfg.cim.enabled and used + msb <= cap
    needed = used + (msb if msb_on_chip else 0)
    # reuse: whatever the query tile and the MSBs leave is a cache of K/V rows (at least the double buffer)
    cache = cap - q_tile - (msb if msb_on_chip else 0) if kv == "reuse" else 0
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


def _fetched_keys(chunks: dict[str, np.ndarray], first_k: np.ndarray, placement: Placement,
                  row_bytes: int) -> np.ndarray:
    """K/V rows each chunk fetches from DRAM under the placement."""
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


def demand(chunks: dict[str, np.ndarray], cfg: SocConfig, shape: Shape, placement: Placement) -> dict[str, np.ndarray]:
    """Bytes and operations per chunk (float64 arrays of the chunk count)."""
    n = len(chunks["layer"])
    hd = shape.head_dim
    elem = cfg.dataflow.element_bytes
    layer, head, qtile, ktile = chunks["layer"], chunks["head"], chunks["qtile"], chunks["ktile"]
    head_id = layer * shape.heads + head
    new_head = np.ones(n, dtype=bool)
    new_head[1:] = head_id[1:] != head_id[:-1]
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
    # per head; a margin rule over several tiles scores every chunk twice, so it loads every tile twice
    passes = scoring_passes(codes, tiles_per_head)
    loads = np.where(tiles_per_head > 1, passes, new_head.astype(np.float64)) if cim_on else zeros
    msb_bytes_per_key = hd * cfg.cim.key_bits / 8.0
    first_use = _first_occurrence(head_id, ktile)
    fetched = _fetched_keys(chunks, first_k, placement, row_bytes=2 * hd * elem)
    q_load = first_k * q_rows * hd * elem
    kmsb_load = loads * k_cols * msb_bytes_per_key
    return {
        "first_k": first_k, "last_k": last_k, "rule_code": codes, "tiles_per_head": tiles_per_head,
        "array_loads": loads,
        "q_load_bytes": q_load,
        "q_msb_bytes": first_k * q_rows * hd * cfg.cim.query_bits / 8.0 if cim_on else zeros,
        # keys' MSBs: DRAM -> SRAM once per (head, key tile) when they stay on chip
        "kmsb_fetch_bytes": first_use * k_cols * msb_bytes_per_key if cim_on and placement.msb_on_chip else zeros,
        "kmsb_load_bytes": kmsb_load,
        "array_write_bits": kmsb_load * 8.0,
        "mask_bytes": q_rows * k_cols / 8.0 if cim_on else zeros,
        "kv_fetch_bytes": fetched * 2.0 * hd * elem,
        "kv_fetch_rows": fetched.astype(np.float64),
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
