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
from soc.hw.cim import RULE_CODES


@dataclass(frozen=True)
class Shape:
    """The workload's attention shape, as the dataflow needs it."""
    layers: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int


def key_tile_keys(cfg: SocConfig, head_dim: int) -> int:
    tile = cfg.cim.key_tile(head_dim)
    if tile < 1:
        raise WiringError(f"cim: one key of head_dim {head_dim} x {cfg.cim.key_bits} bits needs more than the "
                          f"array's {cfg.cim.array_cols} columns of {cfg.cim.array_rows} rows")
    return tile


def kv_placement(cfg: SocConfig, shape: Shape) -> str:
    """'resident' when a head's K and V fit in SRAM beside a query tile and its output, else 'stream'."""
    elem = cfg.dataflow.element_bytes
    q_tile = cfg.dataflow.q_tile_rows * shape.head_dim * (elem + cfg.dataflow.output_bytes)
    head_kv = 2 * shape.seq_k * shape.head_dim * elem
    k_tile = key_tile_keys(cfg, shape.head_dim)
    double_buffer = 2 * 2 * min(k_tile, shape.seq_k) * shape.head_dim * elem
    cap = cfg.sram.capacity_bytes
    if q_tile + double_buffer > cap:
        raise WiringError(f"sram: {cap} bytes cannot hold one query tile and two key tiles of K/V "
                          f"({q_tile + double_buffer} bytes); raise sram.banks or sram.bank_bytes or lower "
                          f"dataflow.q_tile_rows")
    want = cfg.dataflow.kv_placement
    fits = q_tile + head_kv <= cap
    if want == "resident" and not fits:
        raise WiringError(f"dataflow.kv_placement: resident needs {q_tile + head_kv} bytes of SRAM for one head, "
                          f"have {cap}")
    if want == "auto":
        return "resident" if fits else "stream"
    return want


def rule_codes(cfg: SocConfig, layers: int) -> np.ndarray:
    """Rule code of each layer (what the CIM must do), honouring per-layer overrides and a disabled CIM."""
    if not cfg.cim.enabled:
        return np.zeros(layers, dtype=np.int64)
    codes = np.full(layers, RULE_CODES[cfg.pruning.rule], dtype=np.int64)
    for layer, over in cfg.pruning.per_layer.items():
        if over.rule is not None and 0 <= layer < layers:
            codes[layer] = RULE_CODES[over.rule]
    return codes


def demand(chunks: dict[str, np.ndarray], cfg: SocConfig, shape: Shape, placement: str) -> dict[str, np.ndarray]:
    """Bytes and operations per chunk. All arrays are float64 of the chunk count."""
    n = len(chunks["layer"])
    hd = shape.head_dim
    elem = cfg.dataflow.element_bytes
    layer, head, qtile = chunks["layer"], chunks["head"], chunks["qtile"]
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
    # the array is rewritten whenever a head has several key tiles (query-outer order), else once per head;
    # a margin rule over several tiles scores every chunk twice, so it loads every tile twice
    passes = np.where((codes == RULE_CODES["margin"]) & (tiles_per_head > 1), 2.0, 1.0)
    loads = np.where(tiles_per_head > 1, passes, new_head.astype(np.float64)) if cim_on else np.zeros(n)
    fetched = chunks["new_keys"] if placement == "resident" else chunks["union_keys"]
    q_load = first_k * q_rows * hd * elem
    out = {
        "first_k": first_k, "last_k": last_k, "rule_code": codes, "tiles_per_head": tiles_per_head,
        "array_loads": loads,
        "q_load_bytes": q_load,
        "q_msb_bytes": first_k * q_rows * hd * cfg.cim.query_bits / 8.0 if cim_on else np.zeros(n),
        "kmsb_bytes": loads * k_cols * hd * cfg.cim.key_bits / 8.0,
        "array_write_bits": loads * k_cols * hd * cfg.cim.key_bits,
        "mask_bytes": q_rows * k_cols / 8.0 if cim_on else np.zeros(n),
        "kv_fetch_bytes": fetched * 2.0 * hd * elem,
        "kv_read_bytes": chunks["union_keys"] * 2.0 * hd * elem + q_load,
        "out_bytes": last_k * q_rows * hd * cfg.dataflow.output_bytes,
        "cim_macs": (q_rows * k_cols * hd * passes) if cim_on else np.zeros(n),
        "cim_compares": (q_rows * k_cols * passes) if cim_on else np.zeros(n),
        "digital_macs": 2.0 * chunks["pairs_kept"] * hd + chunks["rows_kept"] * hd,
        "digital_exps": chunks["pairs_kept"].astype(np.float64),
    }
    return out


def traffic_totals(d: dict[str, np.ndarray]) -> dict[str, float]:
    """DRAM and SRAM bytes implied by a demand table (the simulation must count exactly these)."""
    return {
        "dram_read_bytes": float(d["q_load_bytes"].sum() + d["kmsb_bytes"].sum() + d["kv_fetch_bytes"].sum()),
        "dram_write_bytes": float(d["out_bytes"].sum()),
        "sram_read_bytes": float(d["q_msb_bytes"].sum() + d["kv_read_bytes"].sum() + d["out_bytes"].sum()),
        "sram_write_bytes": float(d["q_load_bytes"].sum() + d["kv_fetch_bytes"].sum() + d["out_bytes"].sum()),
    }
