"""The SoC description: one frozen dataclass per block section, every parameter with its unit in its name.

Defaults describe the paper's chip (configs/hybrid65nm.yaml restates them with provenance). Energies are per
event; static power is charged over the whole run; areas are per instance. A cost field left null (the default)
is derived by the block's own law from its size and precision and the technology table (``tech``); a value
given here wins and is reported as ``user``. Block kinds are the registry's (soc/hw), asked at validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from soc.config.fields import param

RULES = ("none", "threshold", "margin", "topk")


def registered_kinds(section: str):
    """The allowed ``kind`` values of a section, asked of the block registry (soc/hw) when a config is checked:
    a new block kind registers itself and is accepted here without an edit."""
    def choices() -> tuple[str, ...]:
        from soc.hw import kinds

        return kinds(section)
    return choices


@dataclass(frozen=True)
class LayerPruning:
    """A per-layer override of the pruning rule; unset fields inherit the default rule's values."""
    rule: str | None = param(None, choices=RULES, doc="Pruning rule for this layer.")
    target_kept_fraction: float | None = param(None, gt=0.0, le=1.0, doc="Kept fraction for threshold/topk.")
    threshold: float | None = param(None, doc="Fixed comparator reference, softmax-logit units.")
    threshold_per_head: tuple[float, ...] | None = param(None, doc="Fixed references, one per head.")
    margin: float | None = param(None, ge=0.0, doc="Keep keys within this many logits of the row maximum.")
    topk_keys: int | None = param(None, ge=1, doc="Fixed number of keys kept per query row.")
    keep_sink_tokens: int | None = param(None, ge=0, le=1_000_000, doc="First keys always kept.")
    keep_recent_tokens: int | None = param(None, ge=0, le=1_000_000, doc="Keys up to the query's own always kept.")


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
    threshold_per_head: tuple[float, ...] | None = param(None, doc="Fixed references, one per head (softmax-logit "
                                                                   "units; overrides threshold).")
    margin: float = param(4.0, ge=0.0, doc="Margin below the row maximum, softmax-logit units.")
    topk_keys: int | None = param(None, ge=1, doc="Fixed k for topk (overrides the fraction).")
    granularity: str = param("head", choices=("head", "layer"), doc="Threshold calibration granularity.")
    keep_sink_tokens: int = param(0, ge=0, le=1_000_000,
                                  doc="The first N keys always survive, whatever their score (attention sinks; "
                                      "the digital side computes them without the comparator's say).")
    keep_recent_tokens: int = param(0, ge=0, le=1_000_000,
                                    doc="The N keys ending at the query's own position always survive (1: the "
                                        "token itself), so no row is left empty.")
    calibration_trace: str | None = param(None, doc="Trace to calibrate thresholds on (default: the replayed "
                                                    "trace itself, which is optimistic).")
    per_layer: dict[int, LayerPruning] = param(default_factory=dict, doc="Overrides by layer index.")


@dataclass(frozen=True)
class DataflowConfig:
    q_tile_rows: int = param(16, ge=1, le=4096,
                             doc="Query rows per tile (one CIM pass, one digital job). Under stream it is the "
                                 "tile-union knob: a tile fetches the union of its rows' kept keys, so larger "
                                 "tiles fetch each K/V row for fewer tiles but keep less of the pruning's saving "
                                 "(on MiniLM at 25% kept the union covers 25/46/67/76% of keys at 1/4/16/32 rows).")
    element_bytes: int = param(1, ge=1, le=4, doc="Bytes per Q/K/V element in SRAM and DRAM (int8 = 1).")
    output_bytes: int = param(1, ge=1, le=4, doc="Bytes per attention-output element written back.")
    kv_placement: str = param("auto", choices=("auto", "resident", "stream", "reuse", "row", "cache"),
                              doc="How K/V rows reach SRAM. resident: each row fetched at most once per KV head "
                                  "(the head's K/V must fit); stream: the union of a query tile's kept rows, "
                                  "fetched for every tile; reuse: stream, but the previous tile's rows stay while "
                                  "both tiles' rows fit; row (SPRINT): per query, the kept rows the previous query "
                                  "did not keep, from a survivor buffer of survivor_buffer_bytes; cache: an LRU "
                                  "cache of K/V rows in the SRAM left after the query tile and key MSBs, across "
                                  "query tiles and the query heads of a GQA group; auto: resident if it fits, "
                                  "else stream.")
    survivor_buffer_bytes: int = param(16384, ge=0, le=1 << 34,
                                       doc="row: SRAM holding the previous query's kept K/V rows; a query whose "
                                           "kept set does not fit leaves nothing for the next one.")
    lookups_per_cycle: int = param(4, ge=1, le=4096,
                                   doc="row and cache: survivor-buffer or cache-tag lookups per digital clock "
                                       "cycle (one per kept key of each query for row, one per needed row for "
                                       "cache), done in the fetch stage before the K/V rows move.")


@dataclass(frozen=True)
class CimConfig:
    kind: str = param("charge_cim", choices=registered_kinds("cim"),
                      doc="charge_cim: the analog array; digital_predictor: a SpAtten-like digital unit that "
                          "computes the MSB scores with predictor_lanes 4-bit MACs per cycle.")
    enabled: bool = param(True, doc="false: no pruning stage; the digital processor computes every pair.")
    count: int = param(1, ge=1, le=64, doc="CIM cores (each paired with a digital processor).")
    clock_ghz: float = param(1.1, gt=0.0, le=10.0, doc="CIM compute clock (one bit-serial step per cycle).")
    write_clock_ghz: float = param(1.1, gt=0.0, le=10.0, doc="Clock of array writes (ordinary SRAM writes).")
    array_rows: int = param(128, ge=8, le=65536, doc="Bitcell rows: a stored key spans whole columns.")
    array_cols: int = param(128, ge=1, le=65536, doc="Bitcell columns.")
    query_bits: int = param(4, ge=1, le=8, doc="Query MSBs driven bit-serially on the wordlines.")
    key_bits: int = param(4, ge=1, le=8, doc="Key MSBs stored in the array.")
    full_bits: int = param(8, ge=2, le=16, doc="Precision from which the MSBs are taken.")
    noise_sigma_lsb: float = param(0.0, ge=0.0, le=1e6, doc="Thermal noise per evaluation, sigma in LSBs of the "
                                                             "MSB dot product (adds in quadrature to "
                                                             "noise_fraction_fs).")
    noise_fraction_fs: float = param(0.0025, ge=0.0, le=1.0,
                                     doc="Thermal noise per evaluation, sigma as a fraction of the array's full "
                                         "scale (head_dim x 2^(query_bits-1) x 2^(key_bits-1) LSB).")
    gain_sigma_fraction: float = param(0.005, ge=0.0, le=1.0,
                                       doc="Fixed pattern: per-column gain error (capacitor mismatch), relative "
                                           "sigma; drawn once per chip from chip_seed.")
    offset_fraction_fs: float = param(0.0025, ge=0.0, le=1.0,
                                      doc="Fixed pattern: per-column comparator offset, sigma as a fraction of "
                                          "full scale; drawn once per chip from chip_seed.")
    chip_seed: int = param(0, ge=0, doc="The chip instance: seeds the fixed-pattern errors (the run's seed "
                                        "drives only the thermal noise).")
    rounding: str = param("center", choices=("floor", "round", "center"),
                          doc="How the MSBs stand for the dropped LSBs: floor (arithmetic shift), round (add "
                              "half a step, then shift), center (the bin's centre).")
    compare_cycles: int = param(1, ge=0, le=1024, doc="Comparator/readout cycles per query.")
    write_bits_per_cycle: int = param(128, ge=1, doc="Array write bandwidth (one row per cycle).")
    max_tree_cycles: int = param(7, ge=0, doc="margin rule, keys in one tile: cycles of the row-max tree.")
    sorter_scores_per_cycle: int = param(16, ge=1, doc="topk rule: scores the sorter takes per cycle.")
    predictor_lanes: int = param(64, ge=1, doc="digital_predictor: low-precision MACs per cycle.")
    # cost: null = derived from the technology table by the block's own law (README "Cost laws")
    mac_pj: float | None = param(None, ge=0.0, doc="Energy per MAC (one key element x one query element) "
                                                  "at query_bits x key_bits; null: derived.")
    compare_pj: float | None = param(None, ge=0.0, doc="Energy per comparator decision (one per key per query); "
                                                      "null: derived.")
    write_pj_per_bit: float | None = param(None, ge=0.0, doc="Energy per bit written into the array; null: derived.")
    static_mw: float | None = param(None, ge=0.0, doc="Leakage and clock power; null: derived.")
    area_mm2: float | None = param(None, ge=0.0, doc="Area of one CIM core; null: derived.")

    def key_tile(self, head_dim: int) -> int:
        """Keys resident in the array at once: each key spans ceil(head_dim * key_bits / rows) columns."""
        cols_per_key = math.ceil(head_dim * self.key_bits / self.array_rows)
        return self.array_cols // cols_per_key


@dataclass(frozen=True)
class TokenBufferConfig:
    kind: str = param("fifo", choices=registered_kinds("token_buffer"), doc="Block model.")
    depth_entries: int = param(8, ge=0, le=1_000_000, doc="Kept-token lists (one per tile) it holds.")
    entry_bytes: int = param(512, ge=1, le=1 << 30, doc="Bytes per entry: the keep bitmap of one tile "
                                                          "(q_tile_rows x key tile / 8; 32 x 128 / 8 = 512).")
    access_pj_per_byte: float | None = param(None, ge=0.0, doc="Energy per byte written or read; null: derived.")
    static_mw: float | None = param(None, ge=0.0, doc="Leakage; null: derived.")
    area_mm2: float | None = param(None, ge=0.0, doc="Area; null: derived.")


@dataclass(frozen=True)
class DigitalConfig:
    kind: str = param("mac_array", choices=registered_kinds("digital"), doc="Block model.")
    clock_ghz: float = param(1.1, gt=0.0, le=10.0, doc="Digital clock.")
    mac_lanes: int = param(64, ge=1, doc="MACs per cycle (Q.K and P.V share them).")
    softmax_lanes: int = param(4, ge=1, doc="exp evaluations per cycle (pipelined beside the MACs).")
    job_overhead_cycles: int = param(8, ge=0, doc="Fixed cycles per tile job (setup, drain).")
    operand_bits: int = param(8, ge=1, le=64, doc="Bits of each multiplier operand (int8 Q/K/V and P).")
    accumulator_bits: int = param(24, ge=1, le=128, doc="Bits of each lane's accumulator.")
    mac_pj: float | None = param(None, ge=0.0, doc="Energy per MAC at operand_bits; null: derived.")
    softmax_pj: float | None = param(None, ge=0.0, doc="Energy per exp + accumulate; null: derived.")
    static_mw: float | None = param(None, ge=0.0, doc="Leakage and clock power; null: derived.")
    area_mm2: float | None = param(None, ge=0.0, doc="Area of one digital processor; null: derived.")


@dataclass(frozen=True)
class SramConfig:
    kind: str = param("banked", choices=registered_kinds("sram"), doc="Block model.")
    banks: int = param(8, ge=1, le=1024, doc="Independent banks, one port each.")
    bank_bytes: int = param(8192, ge=64, doc="Capacity per bank.")
    width_bytes: int = param(8, ge=1, le=4096, doc="Bytes per bank access (one per cycle).")
    clock_ghz: float = param(1.1, gt=0.0, le=10.0)
    read_pj_per_byte: float | None = param(None, ge=0.0, doc="Read energy per byte for a bank of "
                                                            "reference_bank_bytes; null: derived.")
    write_pj_per_byte: float | None = param(None, ge=0.0, doc="Write energy per byte for a bank of "
                                                             "reference_bank_bytes; null: derived.")
    reference_bank_bytes: int | None = param(None, ge=64, doc="Bank size explicit energies are given for (null: "
                                                             "bank_bytes); they scale with (bank_bytes / "
                                                             "reference)^sram_energy_exponent of the tech table.")
    static_mw: float | None = param(None, ge=0.0, doc="Leakage of all banks; null: derived.")
    area_mm2: float | None = param(None, ge=0.0, doc="Area of all banks; null: derived.")

    @property
    def capacity_bytes(self) -> int:
        return self.banks * self.bank_bytes


_DRAM_PRESETS = ("lpddr4-3200", "ddr4-3200", "hbm2")  # soc/hw/dram_presets.py PRESETS (a test keeps them equal)


@dataclass(frozen=True)
class DramConfig:
    """Off-chip DRAM. ``simple``: one channel, latency + bytes / bandwidth. ``banked``: channels, banks, row
    buffers and JEDEC timing (soc/hw/dram_banked.py); every ``banked`` field left null takes the preset's value."""
    kind: str = param("simple", choices=registered_kinds("dram"), doc="Block model.")
    bandwidth_gb_per_s: float = param(6.4, gt=0.0, le=1e5, doc="simple: peak bandwidth (1 GB/s = 1 byte/ns).")
    latency_ns: float = param(40.0, ge=0.0, le=1e6, doc="simple: access latency before data flows.")
    read_pj_per_byte: float = param(20.0, ge=0.0, doc="simple: off-chip read energy incl. I/O.")
    write_pj_per_byte: float = param(20.0, ge=0.0, doc="simple: off-chip write energy incl. I/O.")
    static_mw: float = param(0.0, ge=0.0, doc="simple: background power (not counted in the SoC's own power).")
    area_mm2: float = param(0.0, ge=0.0, doc="Off-chip: not part of the die.")
    # --- banked: organization ---------------------------------------------------------------------------------
    preset: str = param("lpddr4-3200", choices=_DRAM_PRESETS,
                        doc="banked: standard part whose timing, organization and energy fill every null field.")
    channels: int | None = param(None, ge=1, le=64, doc="banked: independent channels (each its own data bus).")
    ranks: int | None = param(None, ge=1, le=16, doc="banked: ranks per channel (share the data bus; tRTRS "
                                                     "between ranks; tRRD/tFAW per rank).")
    banks_per_channel: int | None = param(None, ge=1, le=256, doc="banked: banks per channel (all groups).")
    bank_groups: int | None = param(None, ge=1, le=64, doc="banked: bank groups per channel (1: none).")
    rows_per_bank: int | None = param(None, ge=1, le=1 << 24, doc="banked: rows per bank (a power of two).")
    row_bytes: int | None = param(None, ge=16, le=1 << 20, doc="banked: row (page) size per channel, bytes.")
    bus_bytes: int | None = param(None, ge=1, le=1024, doc="banked: data bus width per channel, bytes.")
    burst_length: int | None = param(None, ge=1, le=64, doc="banked: transfers per burst (BL).")
    data_rate_mtps: float | None = param(None, gt=0.0, le=1e5, doc="banked: transfers per second, millions.")
    address_mapping: str | None = param(None, doc="banked: address bit fields from MSB to LSB, ':'-separated, "
                                                  "from row, bank, bankgroup, channel, column (the burst "
                                                  "offset is always lowest), e.g. row:bank:channel:column.")
    page_policy: str = param("open", choices=("open", "closed"),
                             doc="banked: open keeps a row open until a conflict; closed precharges after the "
                                 "last access of a request to that row.")
    scheduler: str = param("frfcfs", choices=("fcfs", "frfcfs"),
                           doc="banked: frfcfs serves the queued requests' bursts row hits first, then oldest, "
                               "activating banks in parallel; fcfs serves bursts in arrival order.")
    queue_depth: int = param(32, ge=1, le=4096, doc="banked: transaction queue per channel (requests the "
                                                     "controller schedules together; more wait outside).")
    bank_queue_depth: int = param(8, ge=1, le=4096, doc="banked: queued bursts per bank the scheduler sees at "
                                                       "once (a bank's command queue; DRAMsim3: 8).")
    write_high_watermark: int = param(32, ge=0, le=4096,
                                      doc="banked: buffered write bursts per channel that force a write drain "
                                          "(writes are posted; also drained when no read waits and more than "
                                          "write_low_watermark are buffered; 0: no write buffer).")
    write_low_watermark: int = param(8, ge=0, le=4096, doc="banked: buffered write bursts drained when idle.")
    refresh: bool = param(False, doc="banked: model all-bank refresh (tRFC every tREFI, rows closed).")
    # --- banked: timing (ns) --------------------------------------------------------------------------------
    cl_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: read command to first data (CL/RL).")
    cwl_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: write command to first data (CWL/WL).")
    trcd_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: activate to column command.")
    trp_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: precharge to activate.")
    tras_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: activate to precharge, minimum.")
    twr_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: end of write data to precharge.")
    trtp_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: read command to precharge.")
    twtr_s_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: end of write data to read, other group.")
    twtr_l_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: end of write data to read, same group.")
    tccd_s_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: column to column, other bank group.")
    tccd_l_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: column to column, same bank group.")
    trrd_s_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: activate to activate, other group.")
    trrd_l_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: activate to activate, same group.")
    tfaw_ns: float | None = param(None, ge=0.0, le=1e5, doc="banked: window holding at most four activates.")
    trfc_ns: float | None = param(None, ge=0.0, le=1e5, doc="banked: all-bank refresh duration.")
    trefi_ns: float | None = param(None, gt=0.0, le=1e7, doc="banked: refresh interval.")
    trtrs_ns: float | None = param(None, ge=0.0, le=1e4, doc="banked: rank-to-rank switch on the data bus.")
    # --- banked: energy ------------------------------------------------------------------------------------------
    activate_pj: float | None = param(None, ge=0.0, doc="banked: one activate + its precharge.")
    read_burst_pj: float | None = param(None, ge=0.0, doc="banked: one read burst in the devices.")
    write_burst_pj: float | None = param(None, ge=0.0, doc="banked: one write burst in the devices.")
    refresh_pj: float | None = param(None, ge=0.0, doc="banked: one all-bank refresh of a channel.")
    io_pj_per_byte: float | None = param(None, ge=0.0, doc="banked: pin I/O energy per byte moved.")
    background_mw: float | None = param(None, ge=0.0, doc="banked: standby power per channel (off-chip).")


@dataclass(frozen=True)
class LinkConfig:
    a: str = param(doc="One end (block instance name).")
    b: str = param(doc="Other end.")
    bandwidth_gb_per_s: float = param(16.0, gt=0.0, doc="Bytes per ns.")
    latency_ns: float = param(1.0, ge=0.0)
    pj_per_byte: float | None = param(None, ge=0.0, doc="Energy per byte over the link; null: derived.")
    length_mm: float = param(1.0, ge=0.0, le=1e3, doc="Wire length (energy = bytes x 8 x wire_pj_per_bit_mm x "
                                                         "length_mm when pj_per_byte is null).")


def _default_links() -> tuple[LinkConfig, ...]:
    return (LinkConfig("dram", "sram", 12.8, 2.0, 0.5), LinkConfig("sram", "cim0", 17.6, 1.0, 0.1),
            LinkConfig("sram", "digital0", 35.2, 1.0, 0.1), LinkConfig("cim0", "digital0", 8.8, 1.0, 0.05))


@dataclass(frozen=True)
class InterconnectConfig:
    """The on-chip network as a graph. ``explicit``: exactly ``links``. ``bus``, ``crossbar``, ``mesh``: the
    links are generated for dram, sram and every cimN/digitalN pair (soc/topology.py) from the link_* and
    dram_link_* parameters below; ``links`` is then ignored."""
    kind: str = param("graph", choices=registered_kinds("interconnect"), doc="Block model.")
    topology: str = param("explicit", choices=("explicit", "bus", "crossbar", "mesh"),
                          doc="explicit: the links list; bus: one shared half-duplex medium; crossbar: a "
                              "switch with one full-duplex port per block; mesh: a 2D grid of routers, one "
                              "block per router.")
    links: tuple[LinkConfig, ...] = param(default_factory=_default_links,
                                          doc="Undirected links between block instances (dram, sram, cimN, "
                                              "digitalN) and routers.")
    routers: tuple[str, ...] = param(default_factory=tuple,
                                     doc="Switch/router nodes that links may join besides blocks (filled in by "
                                         "the generators).")
    shared: dict[str, tuple[int, ...]] = param(default_factory=dict,
                                               doc="Medium name -> indices into links that share one port (a "
                                                   "bus): any transfer over them claims it once.")
    link_bandwidth_gb_per_s: float = param(35.2, gt=0.0, le=1e5,
                                           doc="Generated topologies: bandwidth of each on-chip link/port "
                                               "(the bus's total for bus).")
    link_latency_ns: float = param(1.0, ge=0.0, le=1e4, doc="Generated topologies: latency per on-chip hop.")
    link_pj_per_byte: float = param(0.1, ge=0.0, doc="Generated topologies: energy per byte per on-chip hop.")
    dram_link_bandwidth_gb_per_s: float = param(12.8, gt=0.0, le=1e5,
                                                doc="crossbar/mesh: bandwidth of the off-chip memory port.")
    dram_link_latency_ns: float = param(2.0, ge=0.0, le=1e4, doc="crossbar/mesh: latency of the memory port.")
    dram_link_pj_per_byte: float = param(0.5, ge=0.0, doc="crossbar/mesh: energy per byte of the memory port.")
    mesh_cols: int | None = param(None, ge=1, le=256, doc="mesh: routers per row (null: ceil(sqrt(blocks))).")


@dataclass(frozen=True)
class SocConfig:
    name: str = param("soc", doc="Short name used in reports and tables.")
    description: str = param("", doc="Free text.")
    technology_nm: int = param(65, ge=1, doc="Process node (documentation; the cost model reads tech).")
    tech: str = param("65nm", doc="Technology table: a name in configs/tech/ (65nm, 28nm) or a path.")
    tech_corner: str = param("typical", choices=("typical", "low", "high"),
                             doc="Every ranged entry of the table at its typical, low or high value.")
    tech_overrides: dict[str, float] = param(default_factory=dict, doc="Table entries replaced for this config "
                                                                       "(key -> value in the entry's unit).")
    ops_per_mac: int = param(2, ge=1, le=2, doc="Op-counting convention: 1 MAC = 2 ops.")
    io_pads: int = param(0, ge=0, le=100_000, doc="I/O pads on the die (area: io_pads x io_pad_um2).")
    core_utilization: float = param(1.0, gt=0.0, le=1.0, doc="Share of the core area that cells fill "
                                                              "(placement and routing leave the rest).")
    other_area_mm2: float | None = param(None, ge=0.0, doc="Die area outside the modelled blocks; null: "
                                                            "derived (pads + the core's unfilled share).")
    other_static_mw: float | None = param(None, ge=0.0, doc="Power outside the modelled blocks; null: not "
                                                             "modelled (reported as unknown, counted as 0).")
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
