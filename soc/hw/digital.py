"""The digital processor: exact attention for the kept pairs on a MAC array at its clock.

Cost law (technology table entries in brackets): a lane is an ``operand_bits``^2 multiplier, an
``accumulator_bits`` adder and ``2 x operand_bits + accumulator_bits`` register bits. Energy per MAC =
b^2 [mult_pj_per_bit2] + acc [add_pj_per_bit] + regs [reg_bit_pj]; per exp = [exp_pj]. Area = lanes x (b^2
[mult_um2_per_bit2] + acc [add_um2_per_bit] + regs [reg_bit_um2]) + softmax_lanes x [exp_um2]. Static = area x
[logic_leak_nw_per_um2] + lanes x regs x [clock_fj_per_reg_bit] x clock (no clock gating).

Timing rule per tile job: ``job_overhead_cycles + max(ceil(2 * kept_pairs * head_dim / mac_lanes),
ceil(kept_pairs / softmax_lanes)) + ceil(rows_kept * head_dim / mac_lanes)``: Q.K then P.V on the MAC array with
the exp unit pipelined beside it, then the online-softmax rescale of the running output when a new key tile
raises the row maximum.
"""

from __future__ import annotations

import numpy as np

from typing import Any, Mapping

from soc.hw.base import Processor, clock_mw, logic_leak_mw, register
from soc.tech import cost


@register("digital", "mac_array")
class MacArrayProcessor(Processor):
    def compute_ns(self, pairs_kept: np.ndarray, rows_kept: np.ndarray, head_dim: int) -> np.ndarray:
        cfg = self.cfg
        lanes = cfg.mac_lanes
        cycles = (cfg.job_overhead_cycles
                  + np.maximum(np.ceil(2 * pairs_kept * head_dim / lanes), np.ceil(pairs_kept / cfg.softmax_lanes))
                  + np.ceil(rows_kept * head_dim / lanes))
        return cycles / cfg.clock_ghz

    @classmethod
    def cost_rule(cls, cfg, tech) -> dict[str, dict[str, Any]]:
        b, acc, lanes = cfg.operand_bits, cfg.accumulator_bits, cfg.mac_lanes
        regs = 2 * b + acc
        mac = b * b * tech["mult_pj_per_bit2"] + acc * tech["add_pj_per_bit"] + regs * tech["reg_bit_pj"]
        lane_um2 = b * b * tech["mult_um2_per_bit2"] + acc * tech["add_um2_per_bit"] + regs * tech["reg_bit_um2"]
        area_um2 = lanes * lane_um2 + cfg.softmax_lanes * tech["exp_um2"]
        static = logic_leak_mw(area_um2, tech) + clock_mw(lanes * regs, cfg.clock_ghz, tech)
        return {
            "mac_pj": cost(cfg.mac_pj, mac, f"{b}^2 mult + {acc} add + {regs} register bits", "pJ"),
            "softmax_pj": cost(cfg.softmax_pj, tech["exp_pj"], "one exp unit evaluation + accumulate", "pJ"),
            "area_mm2": cost(cfg.area_mm2, area_um2 * 1e-6, f"{lanes} lanes x {lane_um2:.0f} um2 + "
                             f"{cfg.softmax_lanes} exp units x {tech['exp_um2']:.0f} um2", "mm2"),
            "static_mw": cost(cfg.static_mw, static, f"leakage of {area_um2 * 1e-6:.4f} mm2 + clock of "
                              f"{lanes * regs} register bits at {cfg.clock_ghz} GHz", "mW"),
        }

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        return {"mac": counts.get("macs", 0.0) * self.cost_value("mac_pj"),
                "softmax": counts.get("exps", 0.0) * self.cost_value("softmax_pj")}
