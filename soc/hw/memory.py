"""On-chip SRAM banks and the off-chip DRAM (bandwidth-latency model).

SRAM: ``banks`` banks of ``width_bytes`` per cycle, one port each; consecutive addresses interleave across banks,
so an access of B bytes from address a occupies the banks it touches for ``ceil(B / (banks_touched * width))``
cycles, and two accesses that share a bank serialize. DRAM (``simple``): one channel that serves an access in
``latency_ns + bytes / bandwidth``.

SRAM cost law: read energy per byte = [sram_read_pj_per_byte] x (bank_bytes / [sram_ref_bank_bytes]) ^
[sram_energy_exponent], writes x [sram_write_over_read]; area = banks x bank_bytes x 8 x [sram_bitcell_um2] /
[sram_array_efficiency] + the bank ports' output latches (width x [reg_bit_um2]); leakage = bits x
[sram_leak_pw_per_bit]. DRAM is off chip: its energies are the config's (device and I/O), no die area.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from soc.hw.base import BankArray, BankSet, MemAccess, Memory, Port, next_order, register, sram_pj_per_byte
from soc.tech import cost


@register("sram", "banked")
class BankedSram(Memory):
    claim_rank = 2
    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self.bank_ports: list[Port] = [self.port(f"bank{i}") for i in range(cfg.banks)]
        self.bank_array = BankArray(env, cfg.banks)
        self._order = next_order(self.claim_rank)
        self._cursor = 0  # next address: accesses stream through the banks round-robin
        self._claims: dict[tuple[int, int], BankSet] = {}

    @property
    def capacity_bytes(self) -> int:
        return self.cfg.capacity_bytes

    def access(self, nbytes: float, write: bool, where: tuple[MemAccess, ...] | None = None
               ) -> list[tuple[BankSet, float]]:
        cfg = self.cfg
        words = max(1, math.ceil(nbytes / cfg.width_bytes))
        touched = min(cfg.banks, words)
        first = self._cursor
        self._cursor = (self._cursor + words) % cfg.banks
        duration = math.ceil(words / touched) / cfg.clock_ghz
        self.count("write_bytes" if write else "read_bytes", nbytes)
        claim = self._claims.get((first, touched))
        if claim is None:  # a few (first bank, banks touched) shapes recur: build each claim once
            banks = tuple((first + i) % cfg.banks for i in range(touched))
            claim = BankSet(self.bank_array, banks, [self.bank_ports[b] for b in banks], self._order)
            self._claims[(first, touched)] = claim
        return [(claim, duration)]

    @classmethod
    def cost_rule(cls, cfg, tech) -> dict[str, dict[str, Any]]:
        bits = cfg.banks * cfg.bank_bytes * 8
        # explicit energies are given for reference_bank_bytes (default: this bank) and follow the table's law
        k = (cfg.bank_bytes / (cfg.reference_bank_bytes or cfg.bank_bytes)) ** tech["sram_energy_exponent"]
        read = sram_pj_per_byte(cfg.bank_bytes, tech)
        law = f"{tech['sram_read_pj_per_byte']:.4g} pJ/B x ({cfg.bank_bytes} / {tech['sram_ref_bank_bytes']:.0f})^" \
              f"{tech['sram_energy_exponent']:g}"
        area_um2 = bits * tech["sram_bitcell_um2"] / tech["sram_array_efficiency"] \
            + cfg.banks * cfg.width_bytes * 8 * tech["reg_bit_um2"]
        return {
            "read_pj_per_byte": cost(None if cfg.read_pj_per_byte is None else cfg.read_pj_per_byte * k, read,
                                     law, "pJ"),
            "write_pj_per_byte": cost(None if cfg.write_pj_per_byte is None else cfg.write_pj_per_byte * k,
                                      read * tech["sram_write_over_read"], f"{law} x write/read "
                                      f"{tech['sram_write_over_read']:g}", "pJ"),
            "area_mm2": cost(cfg.area_mm2, area_um2 * 1e-6, f"{cfg.banks} banks x {cfg.bank_bytes} B of "
                             f"{tech['sram_bitcell_um2']:g} um2 cells / efficiency {tech['sram_array_efficiency']:g}",
                             "mm2"),
            "static_mw": cost(cfg.static_mw, bits * tech["sram_leak_pw_per_bit"] * 1e-9,
                              f"{bits} bits x {tech['sram_leak_pw_per_bit']:g} pW", "mW"),
        }

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        return self.bytes_energy_pj(counts)


@register("dram", "simple")
class SimpleDram(Memory):
    claim_rank = 0
    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self.channel: Port = self.port("ch0")

    def access(self, nbytes: float, write: bool, where: tuple[MemAccess, ...] | None = None
               ) -> list[tuple[Port, float]]:
        """Addresses do not matter to this model (see the ``banked`` kind for row buffers)."""
        cfg = self.cfg
        self.count("write_bytes" if write else "read_bytes", nbytes)
        return [(self.channel, cfg.latency_ns + nbytes / cfg.bandwidth_gb_per_s)]

    @classmethod
    def cost_rule(cls, cfg, tech) -> dict[str, dict[str, Any]]:
        """Off chip: the config states the device and I/O energies; no die area."""
        return {"read_pj_per_byte": cost(cfg.read_pj_per_byte, 0.0, "", "pJ"),
                "write_pj_per_byte": cost(cfg.write_pj_per_byte, 0.0, "", "pJ"),
                "area_mm2": cost(cfg.area_mm2, 0.0, "", "mm2"), "static_mw": cost(cfg.static_mw, 0.0, "", "mW")}

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        return self.bytes_energy_pj(counts)
