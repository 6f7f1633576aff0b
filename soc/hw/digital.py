"""The digital processor: exact attention for the kept pairs on a MAC array at its clock.

Timing rule per tile job: ``job_overhead_cycles + max(ceil(2 * kept_pairs * head_dim / mac_lanes),
ceil(kept_pairs / softmax_lanes)) + ceil(rows_kept * head_dim / mac_lanes)``: Q.K then P.V on the MAC array with
the exp unit pipelined beside it, then the online-softmax rescale of the running output when a new key tile
raises the row maximum.
"""

from __future__ import annotations

import numpy as np

from typing import Any, Mapping

from soc.hw.base import Processor, register


@register("digital", "mac_array")
class MacArrayProcessor(Processor):
    def compute_ns(self, pairs_kept: np.ndarray, rows_kept: np.ndarray, head_dim: int) -> np.ndarray:
        cfg = self.cfg
        lanes = cfg.mac_lanes
        cycles = (cfg.job_overhead_cycles
                  + np.maximum(np.ceil(2 * pairs_kept * head_dim / lanes), np.ceil(pairs_kept / cfg.softmax_lanes))
                  + np.ceil(rows_kept * head_dim / lanes))
        return cycles / cfg.clock_ghz

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {"mac": counts.get("macs", 0.0) * cfg.mac_pj, "softmax": counts.get("exps", 0.0) * cfg.softmax_pj}
