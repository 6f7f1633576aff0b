"""The analog charge-domain CIM core that scores every query against the keys resident in its array.

Keys' MSBs sit in the bitcell array, one key per ``ceil(head_dim * key_bits / rows)`` columns; a query's MSBs
drive the wordlines bit-serially, every column accumulates its dot product as charge at once, and a comparator
per column decides keep/prune. Timing rule: one query costs ``query_bits + compare_cycles`` cycles of the compute
clock whatever the number of resident keys; loading a key tile costs ``bits / write_bits_per_cycle`` cycles of the
write clock (array writes are ordinary SRAM writes, faster than charge-domain compute). What each pruning rule
costs (a second pass, a max tree, a sorter) is the scorer interface's (soc/hw/base.py, soc/rules.py).

Cost law (technology table entries in brackets): every MAC of a score (one key element against one query
element) is key_bits cells x query_bits bit-serial steps: mac_pj = query_bits x key_bits x [cim_cell_step_fj];
a comparator decision [comparator_pj]; an array write per bit is an SRAM write of an array-sized bank. Area =
rows x cols [cim_cell_um2] + cols [comparator_um2] + rows [wordline_driver_um2] + the double-buffered query
register (2 x rows x query_bits [reg_bit_um2]). Static = cells x [sram_leak_pw_per_bit] + periphery leakage +
clock of the query register and the comparator latches.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from soc.hw.base import Scorer, clock_mw, logic_leak_mw, register, sram_pj_per_byte
from soc.tech import cost


@register("cim", "charge_cim")
class ChargeCim(Scorer):
    def base_cycles_per_query(self, k_cols: np.ndarray) -> np.ndarray:
        """Bit-serial query steps, then the comparators: every resident key at once."""
        return np.full(np.shape(k_cols), self.cfg.query_bits + self.cfg.compare_cycles, dtype=np.float64)

    @classmethod
    def cost_rule(cls, cfg, tech) -> dict[str, dict[str, Any]]:
        qb, kb, rows, cols = cfg.query_bits, cfg.key_bits, cfg.array_rows, cfg.array_cols
        cells = rows * cols
        qreg = 2 * rows * qb
        periphery_um2 = cols * tech["comparator_um2"] + rows * tech["wordline_driver_um2"] + qreg * tech["reg_bit_um2"]
        area_um2 = cells * tech["cim_cell_um2"] + periphery_um2
        write = sram_pj_per_byte(cells / 8, tech) * tech["sram_write_over_read"] / 8
        static = (cells * tech["sram_leak_pw_per_bit"] * 1e-9 + logic_leak_mw(periphery_um2, tech)
                  + clock_mw(qreg + cols, cfg.clock_ghz, tech))
        return {
            "mac_pj": cost(cfg.mac_pj, qb * kb * tech["cim_cell_step_fj"] * 1e-3,
                           f"{qb} query bits x {kb} key bits x {tech['cim_cell_step_fj']:.4g} fJ per cell step", "pJ"),
            "compare_pj": cost(cfg.compare_pj, tech["comparator_pj"], "one comparator decision", "pJ"),
            "write_pj_per_bit": cost(cfg.write_pj_per_bit, write, f"SRAM write of a {cells // 8}-byte array", "pJ"),
            "area_mm2": cost(cfg.area_mm2, area_um2 * 1e-6, f"{rows} x {cols} cells x {tech['cim_cell_um2']:.4g} um2 "
                             f"+ {cols} comparators + {rows} wordline drivers + {qreg} query register bits", "mm2"),
            "static_mw": cost(cfg.static_mw, static, f"{cells} cells' leakage + periphery leakage + clock of "
                              f"{qreg + cols} register bits at {cfg.clock_ghz} GHz", "mW"),
        }

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        return self.scoring_energy_pj(counts)
