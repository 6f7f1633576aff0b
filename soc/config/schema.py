"""The SoC description: one frozen dataclass per block section, every parameter with its unit in its name.

Defaults describe the paper's chip (configs/hybrid65nm.yaml restates them with provenance). Energies are per
event; static power is charged over the whole run; areas are per instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from soc.config.fields import param

RULES = ("none", "threshold", "margin", "topk")


@dataclass(frozen=True)
class LayerPruning:
    """A per-layer override of the pruning rule; unset fields inherit the default rule's values."""
    rule: str | None = param(None, choices=RULES, doc="Pruning rule for this layer.")
    target_kept_fraction: float | None = param(None, gt=0.0, le=1.0, doc="Kept fraction for threshold/topk.")
    threshold: float | None = param(None, doc="Fixed comparator reference, softmax-logit units.")
    margin: float | None = param(None, ge=0.0, doc="Keep keys within this many logits of the row maximum.")
    topk_keys: int | None = param(None, ge=1, doc="Fixed number of keys kept per query row.")


@dataclass(frozen=True)
class PruningConfig:
    rule: str = param("threshold", choices=RULES,
                      doc="none: dense; threshold: comparator vs a per-head reference (one pass); "
                          "margin: keep s~ >= rowmax - margin (needs the row max: a second pass or a max tree); "
                          "topk: keep the k best per row (needs a sorter).")
    target_kept_fraction: float = param(0.25, gt=0.0, le=1.0,
                                        doc="threshold: calibrate the reference for this kept fraction; "
                                            "topk: keep ceil(fraction x valid keys) per row.")
    threshold: float | None = param(None, doc="Fixed comparator reference in softmax-logit units "
                                              "(skips calibration).")
    margin: float = param(4.0, ge=0.0, doc="Margin below the row maximum, softmax-logit units.")
    topk_keys: int | None = param(None, ge=1, doc="Fixed k for topk (overrides the fraction).")
    granularity: str = param("head", choices=("head", "layer"), doc="Threshold calibration granularity.")
    calibration_trace: str | None = param(None, doc="Trace to calibrate thresholds on (default: the replayed "
                                                    "trace itself, which is optimistic).")
    per_layer: dict[int, LayerPruning] = param(default_factory=dict, doc="Overrides by layer index.")


@dataclass(frozen=True)
class DataflowConfig:
    q_tile_rows: int = param(16, ge=1, le=4096, doc="Query rows per tile (one CIM pass, one digital job).")
    element_bytes: int = param(1, ge=1, le=4, doc="Bytes per Q/K/V element in SRAM and DRAM (int8 = 1).")
    output_bytes: int = param(1, ge=1, le=4, doc="Bytes per attention-output element written back.")
    kv_placement: str = param("auto", choices=("auto", "resident", "stream"),
                              doc="resident: each K/V row fetched from DRAM at most once per head (needs the "
                                  "head's K/V to fit in SRAM); stream: fetched for every query tile; auto: "
                                  "resident when it fits.")


@dataclass(frozen=True)
class CimConfig:
    kind: str = param("charge_cim", choices=("charge_cim",), doc="Block model.")
    enabled: bool = param(True, doc="false: no analog pruning; the digital processor computes every pair.")
    count: int = param(1, ge=1, le=64, doc="CIM cores (each paired with a digital processor).")
    clock_ghz: float = param(1.1, gt=0.0, le=10.0, doc="CIM compute clock.")
    array_rows: int = param(128, ge=8, le=65536, doc="Bitcell rows: a stored key spans whole columns.")
    array_cols: int = param(128, ge=1, le=65536, doc="Bitcell columns.")
    query_bits: int = param(4, ge=1, le=8, doc="Query MSBs driven bit-serially on the wordlines.")
    key_bits: int = param(4, ge=1, le=8, doc="Key MSBs stored in the array.")
    full_bits: int = param(8, ge=2, le=16, doc="Precision from which the MSBs are taken.")
    noise_sigma_lsb: float = param(0.5, ge=0.0, le=1e6, doc="Analog noise, sigma in LSBs of the score.")
    compare_cycles: int = param(1, ge=0, le=1024, doc="Comparator/readout cycles per query.")
    write_bits_per_cycle: int = param(128, ge=1, doc="Array write bandwidth (one row per cycle).")
    max_tree_cycles: int = param(7, ge=0, doc="margin rule, keys in one tile: cycles of the row-max tree.")
    sorter_scores_per_cycle: int = param(16, ge=1, doc="topk rule: scores the sorter takes per cycle.")
    mac_pj: float = param(0.05, ge=0.0, doc="Energy per analog MAC at the configured bits.")
    compare_pj: float = param(0.05, ge=0.0, doc="Energy per comparator decision (one per key per query).")
    write_pj_per_bit: float = param(0.02, ge=0.0, doc="Energy per bit written into the array.")
    static_mw: float = param(1.0, ge=0.0, doc="Leakage and bias power.")
    area_mm2: float = param(0.1, ge=0.0, doc="Area of one CIM core.")

    def key_tile(self, head_dim: int) -> int:
        """Keys resident in the array at once: each key spans ceil(head_dim * key_bits / rows) columns."""
        cols_per_key = math.ceil(head_dim * self.key_bits / self.array_rows)
        return self.array_cols // cols_per_key


@dataclass(frozen=True)
class TokenBufferConfig:
    kind: str = param("fifo", choices=("fifo",), doc="Block model.")
    depth_entries: int = param(8, ge=0, le=1_000_000, doc="Kept-token lists (one per tile) it holds.")
    access_pj_per_byte: float = param(0.05, ge=0.0, doc="Energy per byte written or read.")
    static_mw: float = param(0.1, ge=0.0)
    area_mm2: float = param(0.02, ge=0.0)


@dataclass(frozen=True)
class DigitalConfig:
    kind: str = param("mac_array", choices=("mac_array",), doc="Block model.")
    clock_ghz: float = param(1.1, gt=0.0, le=10.0, doc="Digital clock.")
    mac_lanes: int = param(64, ge=1, doc="MACs per cycle (Q.K and P.V share them).")
    softmax_lanes: int = param(4, ge=1, doc="exp evaluations per cycle.")
    job_overhead_cycles: int = param(8, ge=0, doc="Fixed cycles per tile job (setup, drain).")
    mac_pj: float = param(0.6, ge=0.0, doc="Energy per MAC at element precision.")
    softmax_pj: float = param(2.0, ge=0.0, doc="Energy per exp + accumulate.")
    static_mw: float = param(10.0, ge=0.0)
    area_mm2: float = param(1.5, ge=0.0)


@dataclass(frozen=True)
class SramConfig:
    kind: str = param("banked", choices=("banked",), doc="Block model.")
    banks: int = param(8, ge=1, le=1024, doc="Independent banks, one port each.")
    bank_bytes: int = param(8192, ge=64, doc="Capacity per bank.")
    width_bytes: int = param(8, ge=1, le=4096, doc="Bytes per bank access (one per cycle).")
    clock_ghz: float = param(1.1, gt=0.0, le=10.0)
    read_pj_per_byte: float = param(0.3, ge=0.0)
    write_pj_per_byte: float = param(0.35, ge=0.0)
    static_mw: float = param(2.0, ge=0.0)
    area_mm2: float = param(0.9, ge=0.0)

    @property
    def capacity_bytes(self) -> int:
        return self.banks * self.bank_bytes


@dataclass(frozen=True)
class DramConfig:
    kind: str = param("simple", choices=("simple",), doc="Block model.")
    bandwidth_gb_per_s: float = param(6.4, gt=0.0, le=1e5, doc="Peak bandwidth (1 GB/s = 1 byte/ns).")
    latency_ns: float = param(40.0, ge=0.0, le=1e6, doc="Access latency before data flows.")
    read_pj_per_byte: float = param(20.0, ge=0.0, doc="Off-chip read energy incl. I/O.")
    write_pj_per_byte: float = param(20.0, ge=0.0)
    static_mw: float = param(0.0, ge=0.0, doc="Background power (not counted in the SoC's own power).")
    area_mm2: float = param(0.0, ge=0.0, doc="Off-chip: not part of the die.")


@dataclass(frozen=True)
class LinkConfig:
    a: str = param(doc="One end (block instance name).")
    b: str = param(doc="Other end.")
    bandwidth_gb_per_s: float = param(16.0, gt=0.0, doc="Bytes per ns.")
    latency_ns: float = param(1.0, ge=0.0)
    pj_per_byte: float = param(0.1, ge=0.0)


def _default_links() -> tuple[LinkConfig, ...]:
    return (LinkConfig("dram", "sram", 12.8, 2.0, 0.5), LinkConfig("sram", "cim0", 17.6, 1.0, 0.1),
            LinkConfig("sram", "digital0", 35.2, 1.0, 0.1), LinkConfig("cim0", "digital0", 8.8, 1.0, 0.05))


@dataclass(frozen=True)
class InterconnectConfig:
    links: tuple[LinkConfig, ...] = param(default_factory=_default_links,
                                          doc="Undirected links between block instances (dram, sram, cimN, "
                                              "digitalN).")


@dataclass(frozen=True)
class SocConfig:
    name: str = param("soc", doc="Short name used in reports and tables.")
    description: str = param("", doc="Free text.")
    technology_nm: int = param(65, ge=1, doc="Process node (documentation only).")
    ops_per_mac: int = param(2, ge=1, le=2, doc="Op-counting convention: 1 MAC = 2 ops.")
    other_area_mm2: float = param(0.0, ge=0.0, doc="Die area not in any modelled block (pads, control).")
    other_static_mw: float = param(0.0, ge=0.0, doc="Power not in any modelled block (clock tree, I/O).")
    dataflow: DataflowConfig = param(default_factory=DataflowConfig)
    pruning: PruningConfig = param(default_factory=PruningConfig)
    cim: CimConfig = param(default_factory=CimConfig)
    token_buffer: TokenBufferConfig = param(default_factory=TokenBufferConfig)
    digital: DigitalConfig = param(default_factory=DigitalConfig)
    sram: SramConfig = param(default_factory=SramConfig)
    dram: DramConfig = param(default_factory=DramConfig)
    interconnect: InterconnectConfig = param(default_factory=InterconnectConfig)
    provenance: dict[str, str] = param(default_factory=dict,
                                       doc="dotted.key -> 'published: ...' | 'derived: ...' | 'assumed: ...'.")
    seed: int = param(0, ge=0, doc="Seed of the analog noise.")
