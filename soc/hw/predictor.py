"""A SpAtten-like digital score predictor, the baseline that the analog CIM core replaces.

It keeps the MSBs of a key tile in a small buffer (loaded like the CIM array) and computes the approximate scores
on ``predictor_lanes`` low-precision MACs per cycle: one query against ``k`` keys of ``head_dim`` costs
``ceil(k * head_dim / predictor_lanes)`` cycles, where the analog array pays ``query_bits + compare_cycles``
whatever ``k``. Pruning rules cost what they cost on any scorer (a top-k sorter, a max tree or second pass).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from soc.hw.base import Scorer, register


@register("cim", "digital_predictor")
class DigitalPredictor(Scorer):
    def base_cycles_per_query(self, k_cols: np.ndarray) -> np.ndarray:
        return np.ceil(k_cols * self._head_dim / self.cfg.predictor_lanes) + self.cfg.compare_cycles

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {"mac": counts.get("macs", 0.0) * cfg.mac_pj, "compare": counts.get("compares", 0.0) * cfg.compare_pj,
                "array_write": counts.get("write_bits", 0.0) * cfg.write_pj_per_bit}
