"""Timing, organization and energy presets for the bank-level DRAM model (``dram.kind: banked``).

Each preset describes **one channel** of a standard part plus how many channels the memory system has; every
value is in ns, bytes or pJ so the model never needs the clock. Values come from the JEDEC speed bins as
encoded in public simulator presets; the source of each group is in the comments. Energies per activation and
per burst are derived from the IDD currents of those presets with the usual (Micron TN-41-01 / DRAMsim3)
rules:

    activate_pj   = VDD * (IDD0 * tRC - (IDD3N * tRAS + IDD2N * tRP)) * devices   (one ACT + its PRE)
    read_burst_pj = VDD * (IDD4R - IDD3N) * t_burst * devices
    write_burst_pj= VDD * (IDD4W - IDD3N) * t_burst * devices
    refresh_pj    = VDD * (IDD5AB - IDD3N) * tRFC * devices
    background_mw = VDD * IDD3N * devices  (active standby, per channel)

(mA x ns = pC; pC x V = pJ.) The I/O energy per byte moved over the pins is not in IDD currents and is an
assumption per interface class, labelled as such.

``resolve_spec(cfg)`` fills every null ``dram.*`` field from the chosen preset and checks the organization and
the address mapping, giving the ``DramSpec`` the bank-level model (soc/hw/dram_banked.py) runs on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from soc.errors import ConfigError


def _preset(values: dict[str, Any], *, vdd: float, devices: int, idd0: float, idd2n: float, idd3n: float,
            idd4r: float, idd4w: float, idd5ab: float) -> Mapping[str, Any]:
    """A preset: its organization and timing, plus the energies its IDD currents imply with that timing."""
    trc_ns = values["tras_ns"] + values["trp_ns"]
    t_burst_ns = values["burst_length"] / (values["data_rate_mtps"] / 1000.0)  # transfers / (transfers per ns)
    return MappingProxyType({
        **values,
        "activate_pj": vdd * (idd0 * trc_ns - (idd3n * values["tras_ns"] + idd2n * values["trp_ns"])) * devices,
        "read_burst_pj": vdd * (idd4r - idd3n) * t_burst_ns * devices,
        "write_burst_pj": vdd * (idd4w - idd3n) * t_burst_ns * devices,
        "refresh_pj": vdd * (idd5ab - idd3n) * values["trfc_ns"] * devices,
        "background_mw": vdd * idd3n * devices,
    })


# --- LPDDR4-3200, one x16 channel ---------------------------------------------------------------------------
# JESD209-4 speed bin 3200 (tCK 0.625 ns): BL16 (8 tCK on the bus = 5.0 ns, 32 bytes on 16 DQ), RL 28 tCK =
# 17.5 ns (no DBI), WL 14 tCK = 8.75 ns (set A), tRCD 18 ns, tRPpb 18 ns, tRAS 42 ns, tWR 18 ns, tRTP 7.5 ns,
# tWTR 10 ns, tRRD 10 ns, tFAW 40 ns, tCCD 8 tCK; 8 banks, no bank groups, 2 KB page per channel; 8 Gb per
# channel: 65536 rows; tRFCab 280 ns, tREFI 3.904 us. The same figures appear in Ramulator's LPDDR4_3200 speed
# entry (src/LPDDR4.h) after its 1-cycle command convention and in REFERENCE.md section 7. IDD currents (VDD2
# = 1.1 V, per x16 channel) are typical datasheet values of 8 Gb/channel parts: assumed.
LPDDR4_3200 = _preset({
    "standard": "LPDDR4-3200",
    "channels": 1, "ranks": 1, "banks_per_channel": 8, "bank_groups": 1, "rows_per_bank": 65536, "row_bytes": 2048,
    "bus_bytes": 2, "burst_length": 16, "data_rate_mtps": 3200.0,
    "cl_ns": 17.5, "cwl_ns": 8.75, "trcd_ns": 18.0, "trp_ns": 18.0, "tras_ns": 42.0, "twr_ns": 18.0,
    "trtp_ns": 7.5, "twtr_s_ns": 10.0, "twtr_l_ns": 10.0, "tccd_s_ns": 5.0, "tccd_l_ns": 5.0,
    "trrd_s_ns": 10.0, "trrd_l_ns": 10.0, "tfaw_ns": 40.0, "trfc_ns": 280.0, "trefi_ns": 3904.0,
    "trtrs_ns": 0.625,
    "address_mapping": "row:bank:channel:column",
    # unterminated LVSTL I/O, ~1 pJ/bit: assumed
    "io_pj_per_byte": 8.0,
}, vdd=1.1, devices=1, idd0=55.0, idd2n=25.0, idd3n=35.0, idd4r=230.0, idd4w=220.0, idd5ab=150.0)

# --- DDR4-3200AA, one 64-bit channel of x8 devices ----------------------------------------------------------
# DRAMsim3 configs/DDR4_8Gb_x8_3200.ini (JESD79-4 3200AA, 22-22-22): tCK 0.625 ns, CL = tRCD = tRP = 22 tCK =
# 13.75 ns, CWL 16 tCK = 10 ns, tRAS 52 tCK = 32.5 ns, tWR 24 tCK = 15 ns, tRTP 12 tCK = 7.5 ns, tWTR_S/L 4/12
# tCK = 2.5/7.5 ns, tCCD_S/L 4/8 tCK = 2.5/5 ns, tRRD_S/L 4/8 tCK = 2.5/5 ns, tFAW 34 tCK = 21.25 ns, tRFC 560
# tCK = 350 ns, tREFI 12480 tCK = 7.8 us, tRTRS 1 tCK = 0.625 ns; 4 bank groups x 4 banks, 65536 rows, 1024 columns x 8 devices x 8
# bits = 8 KB page; BL8 = 4 tCK = 2.5 ns, 64 bytes per burst. IDD (VDD 1.2 V): IDD0 57, IDD2N 37, IDD3N 52,
# IDD4R 168, IDD4W 150, IDD5AB 250 mA from the same file.
# Default mapping puts the bank group right above the burst offset so a sequential stream alternates bank
# groups (tCCD_S) as DDR4 controllers do; keeping a stream in one bank group would be limited by tCCD_L.
DDR4_3200 = _preset({
    "standard": "DDR4-3200AA",
    "channels": 1, "ranks": 1, "banks_per_channel": 16, "bank_groups": 4, "rows_per_bank": 65536, "row_bytes": 8192,
    "bus_bytes": 8, "burst_length": 8, "data_rate_mtps": 3200.0,
    "cl_ns": 13.75, "cwl_ns": 10.0, "trcd_ns": 13.75, "trp_ns": 13.75, "tras_ns": 32.5, "twr_ns": 15.0,
    "trtp_ns": 7.5, "twtr_s_ns": 2.5, "twtr_l_ns": 7.5, "tccd_s_ns": 2.5, "tccd_l_ns": 5.0,
    "trrd_s_ns": 2.5, "trrd_l_ns": 5.0, "tfaw_ns": 21.25, "trfc_ns": 350.0, "trefi_ns": 7800.0,
    "trtrs_ns": 0.625,
    "address_mapping": "row:rank:bank:column:bankgroup:channel",
    # terminated POD12 I/O on a DIMM, ~3 pJ/bit: assumed
    "io_pj_per_byte": 24.0,
}, vdd=1.2, devices=8, idd0=57.0, idd2n=37.0, idd3n=52.0, idd4r=168.0, idd4w=150.0, idd5ab=250.0)

# --- HBM2, one stack of 8 legacy 128-bit channels at 2.0 Gb/s per pin ---------------------------------------
# DRAMsim3 configs/HBM2_8Gb_x128.ini (JESD235): tCK 1 ns, CL = tRCD = tRP = 14 ns, CWL 4 ns, tRAS 34 ns, tWR
# 16 ns, tRTP_S 4 ns, tWTR_S/L 6/8 ns, tCCD_S/L 1/2 tCK (the 2 ns burst dominates both), tRRD_S/L 4/6 ns, tFAW
# 30 ns, tRFC 260 ns, tREFI 3.9 us; 4 bank groups x 4 banks, 32768 rows. Page: 2 KB per 128-bit legacy channel
# (JESD235A: 1 KB per pseudo channel, 2 KB in legacy mode; DRAMsim3 src/configuration.cc doubles the ini's 64
# columns x 128 bits for HBM's 2n prefetch, i.e. 128 x 16 bytes = 2 KB).
# BL4 on 128 DQ = 64 bytes per burst in 2 ns (32 GB/s per channel, 256 GB/s per stack). tRTRS: no ranks
# (1 tCK stated for completeness). IDD (VDD 1.2 V, per
# channel): IDD0 65, IDD2N 40, IDD3N 55, IDD4R 390, IDD4W 500, IDD5AB 250 mA from the same file.
HBM2 = _preset({
    "standard": "HBM2",
    "channels": 8, "ranks": 1, "banks_per_channel": 16, "bank_groups": 4, "rows_per_bank": 32768, "row_bytes": 2048,
    "bus_bytes": 16, "burst_length": 4, "data_rate_mtps": 2000.0,
    "cl_ns": 14.0, "cwl_ns": 4.0, "trcd_ns": 14.0, "trp_ns": 14.0, "tras_ns": 34.0, "twr_ns": 16.0,
    "trtp_ns": 4.0, "twtr_s_ns": 6.0, "twtr_l_ns": 8.0, "tccd_s_ns": 1.0, "tccd_l_ns": 2.0,
    "trrd_s_ns": 4.0, "trrd_l_ns": 6.0, "tfaw_ns": 30.0, "trfc_ns": 260.0, "trefi_ns": 3900.0,
    "trtrs_ns": 1.0,
    # DRAMsim3's HBM2 mapping "rorabgbachco": a 2 KB page per channel, channels interleaved at 2 KB
    "address_mapping": "row:bankgroup:bank:channel:column",
    # short interposer wires, ~0.5 pJ/bit: assumed
    "io_pj_per_byte": 4.0,
}, vdd=1.2, devices=1, idd0=65.0, idd2n=40.0, idd3n=55.0, idd4r=390.0, idd4w=500.0, idd5ab=250.0)

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "lpddr4-3200": LPDDR4_3200,
    "ddr4-3200": DDR4_3200,
    "hbm2": HBM2,
})

#: The keys every preset defines; each may be overridden by the same-named ``dram.*`` config field.
PRESET_KEYS = tuple(k for k in LPDDR4_3200 if k != "standard")


def peak_bandwidth_gb_per_s(p: Mapping[str, Any]) -> float:
    """Peak data bandwidth of all channels: transfers/s x bus bytes (1 GB/s = 1 byte/ns)."""
    return p["channels"] * p["data_rate_mtps"] * 1e-3 * p["bus_bytes"]


# --- a config resolved against its preset ------------------------------------------------------------------
FIELDS = ("row", "rank", "bank", "bankgroup", "channel", "column")


@dataclass(frozen=True)
class DramSpec:
    """A DRAM config with the preset filled in and the derived quantities every schedule needs."""
    standard: str
    channels: int
    ranks: int
    banks_per_channel: int
    bank_groups: int
    rows_per_bank: int
    row_bytes: int
    bus_bytes: int
    burst_length: int
    data_rate_mtps: float
    cl_ns: float
    cwl_ns: float
    trcd_ns: float
    trp_ns: float
    tras_ns: float
    twr_ns: float
    trtp_ns: float
    twtr_s_ns: float
    twtr_l_ns: float
    tccd_s_ns: float
    tccd_l_ns: float
    trrd_s_ns: float
    trrd_l_ns: float
    tfaw_ns: float
    trfc_ns: float
    trefi_ns: float
    trtrs_ns: float
    address_mapping: str
    activate_pj: float
    read_burst_pj: float
    write_burst_pj: float
    refresh_pj: float
    io_pj_per_byte: float
    background_mw: float

    @property
    def burst_bytes(self) -> int:
        return self.bus_bytes * self.burst_length

    @property
    def t_burst_ns(self) -> float:
        """Data-bus time of one burst: BL transfers at the data rate."""
        return self.burst_length * 1e3 / self.data_rate_mtps

    @property
    def tck_ns(self) -> float:
        return 2e3 / self.data_rate_mtps  # double data rate: two transfers per clock

    @property
    def peak_gb_per_s(self) -> float:
        return peak_bandwidth_gb_per_s(dataclasses.asdict(self))


def _pow2(value: int, key: str) -> int:
    if value < 1 or value & (value - 1):
        raise ConfigError(f"dram.{key}: expected a power of two for the address mapping, got {value}")
    return value.bit_length() - 1


MIN_TREFI_NS = 100.0


def resolve_spec(cfg: Any) -> DramSpec:
    """Preset values overridden by every non-null ``dram.*`` field; checked for consistency."""
    preset = PRESETS[cfg.preset]
    vals = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else preset[k]) for k in PRESET_KEYS}
    spec = DramSpec(standard=preset["standard"], **vals)
    if spec.banks_per_channel % spec.bank_groups:
        raise ConfigError(f"dram.bank_groups: expected a divisor of banks_per_channel "
                          f"({spec.banks_per_channel}), got {spec.bank_groups}")
    if spec.row_bytes % spec.burst_bytes:
        raise ConfigError(f"dram.row_bytes: expected a multiple of one burst ({spec.burst_bytes} bytes = "
                          f"bus_bytes x burst_length), got {spec.row_bytes}")
    if cfg.refresh and spec.trefi_ns < max(2 * spec.trfc_ns, MIN_TREFI_NS):
        # a refresh interval shorter than the refresh itself would leave no time to serve requests
        raise ConfigError(f"dram.trefi_ns: expected at least max(2 x trfc_ns, {MIN_TREFI_NS:g}) = "
                          f"{max(2 * spec.trfc_ns, MIN_TREFI_NS):g} ns with refresh on, got {spec.trefi_ns:g}")
    address_fields(spec)  # validates the mapping
    return spec


def address_fields(spec: DramSpec) -> list[tuple[str, int]]:
    """(field, bits) from LSB to MSB above the burst offset."""
    bits = {"channel": _pow2(spec.channels, "channels"), "rank": _pow2(spec.ranks, "ranks"), "bankgroup": _pow2(spec.bank_groups, "bank_groups"),
            "bank": _pow2(spec.banks_per_channel // spec.bank_groups, "banks_per_channel"),
            "column": _pow2(spec.row_bytes // spec.burst_bytes, "row_bytes"),
            "row": _pow2(spec.rows_per_bank, "rows_per_bank")}
    _pow2(spec.burst_bytes, "bus_bytes")
    names = [f.strip() for f in spec.address_mapping.split(":")]
    bad = [f for f in names if f not in FIELDS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"dram.address_mapping: expected distinct fields from {', '.join(FIELDS)} "
                          f"separated by ':', got {spec.address_mapping!r}")
    missing = [f for f in FIELDS if f not in names and bits[f] > 0]
    if missing:
        raise ConfigError(f"dram.address_mapping: {spec.address_mapping!r} lacks {', '.join(missing)} "
                          f"(needed: more than one of them exists)")
    return [(f, bits[f]) for f in reversed(names)]
