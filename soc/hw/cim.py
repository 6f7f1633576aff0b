"""The analog charge-domain CIM core that scores every query against the keys resident in its array.

Keys' MSBs sit in the bitcell array, one key per ``ceil(head_dim * key_bits / rows)`` columns; a query's MSBs
drive the wordlines bit-serially, every column accumulates its dot product as charge at once, and a comparator
per column decides keep/prune. Timing rule: one query costs ``query_bits + compare_cycles`` cycles of the compute
clock whatever the number of resident keys; loading a key tile costs ``bits / write_bits_per_cycle`` cycles of the
write clock (array writes are ordinary SRAM writes, faster than charge-domain compute). What each pruning rule
costs (a second pass, a max tree, a sorter) is the scorer interface's (soc/hw/base.py, soc/rules.py).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from soc.hw.base import Scorer, register


@register("cim", "charge_cim")
class ChargeCim(Scorer):
    def base_cycles_per_query(self, k_cols: np.ndarray) -> np.ndarray:
        """Bit-serial query steps, then the comparators: every resident key at once."""
        return np.full(np.shape(k_cols), self.cfg.query_bits + self.cfg.compare_cycles, dtype=np.float64)

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {"mac": counts.get("macs", 0.0) * cfg.mac_pj, "compare": counts.get("compares", 0.0) * cfg.compare_pj,
                "array_write": counts.get("write_bits", 0.0) * cfg.write_pj_per_bit}
