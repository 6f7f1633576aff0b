"""A SpAtten-like digital score predictor, the baseline that the analog CIM core replaces.

It keeps the MSBs of a key tile in a small buffer (loaded like the CIM array) and computes the approximate scores
on ``predictor_lanes`` low-precision MACs per cycle: one query against ``k`` keys of ``head_dim`` costs
``ceil(k * head_dim / predictor_lanes)`` cycles, where the analog array pays ``query_bits + compare_cycles``
whatever ``k``. Pruning rules cost what they cost on any scorer (a top-k sorter, a max tree or second pass).

Cost law: a lane is a query_bits x key_bits multiplier and an accumulator of query_bits + key_bits + 5 bits
(32-element dot products), with its register bits; a decision is a digital compare of that width; the MSB buffer
is a register file of rows x cols bits; the sorter has sorter_scores_per_cycle compare units.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from soc.hw.base import Scorer, clock_mw, logic_leak_mw, register
from soc.tech import cost


@register("cim", "digital_predictor")
class DigitalPredictor(Scorer):
    def base_cycles_per_query(self, k_cols: np.ndarray) -> np.ndarray:
        return np.ceil(k_cols * self._head_dim / self.cfg.predictor_lanes) + self.cfg.compare_cycles

    @classmethod
    def cost_rule(cls, cfg, tech) -> dict[str, dict[str, Any]]:
        qb, kb, lanes = cfg.query_bits, cfg.key_bits, cfg.predictor_lanes
        acc = qb + kb + 5
        regs = qb + kb + acc
        mac = qb * kb * tech["mult_pj_per_bit2"] + acc * tech["add_pj_per_bit"] + regs * tech["reg_bit_pj"]
        lane_um2 = qb * kb * tech["mult_um2_per_bit2"] + acc * tech["add_um2_per_bit"] + regs * tech["reg_bit_um2"]
        buffer_um2 = cfg.array_rows * cfg.array_cols * tech["regfile_bit_um2"]
        sorter_um2 = cfg.sorter_scores_per_cycle * acc * (tech["add_um2_per_bit"] + tech["reg_bit_um2"])
        logic_um2 = lanes * lane_um2 + sorter_um2
        static = logic_leak_mw(logic_um2 + buffer_um2, tech) + clock_mw(lanes * regs, cfg.clock_ghz, tech)
        return {
            "mac_pj": cost(cfg.mac_pj, mac, f"{qb}x{kb} mult + {acc} add + {regs} register bits", "pJ"),
            "compare_pj": cost(cfg.compare_pj, acc * tech["add_pj_per_bit"], f"a {acc}-bit compare", "pJ"),
            "write_pj_per_bit": cost(cfg.write_pj_per_bit, tech["regfile_pj_per_bit"], "a register-file bit", "pJ"),
            "area_mm2": cost(cfg.area_mm2, (logic_um2 + buffer_um2) * 1e-6, f"{lanes} lanes x {lane_um2:.0f} um2 + "
                             f"{cfg.array_rows * cfg.array_cols}-bit MSB buffer + sorter", "mm2"),
            "static_mw": cost(cfg.static_mw, static, f"leakage + clock of {lanes * regs} register bits at "
                              f"{cfg.clock_ghz} GHz", "mW"),
        }

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        return self.scoring_energy_pj(counts)
