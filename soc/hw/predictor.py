"""A SpAtten-like digital score predictor, the baseline that the analog CIM core replaces.

It keeps the MSBs of a key tile in a small buffer (loaded like the CIM array) and computes the approximate scores
on ``predictor_lanes`` low-precision MACs per cycle: one query against ``k`` keys of ``head_dim`` costs
``ceil(k * head_dim / predictor_lanes)`` cycles, where the analog array pays ``query_bits + compare_cycles``
whatever ``k``. Pruning rules cost what they cost on the CIM core (a top-k sorter, a max tree or second pass).
"""

from __future__ import annotations

import numpy as np

from soc.hw.base import register
from soc.hw.cim import ChargeCim


@register("cim", "digital_predictor")
class DigitalPredictor(ChargeCim):
    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self._head_dim = 0

    def set_head_dim(self, head_dim: int) -> None:
        self._head_dim = head_dim

    def base_cycles_per_query(self, k_cols: np.ndarray) -> np.ndarray:
        return np.ceil(k_cols * self._head_dim / self.cfg.predictor_lanes) + self.cfg.compare_cycles
