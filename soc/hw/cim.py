"""The analog charge-domain CIM core that scores every query against the keys resident in its array.

Keys' MSBs sit in the bitcell array, one key per ``ceil(head_dim * key_bits / rows)`` columns; a query's MSBs
drive the wordlines bit-serially, every column accumulates its dot product as charge at once, and a comparator
per column decides keep/prune. Timing rule: one query costs ``query_bits + compare_cycles`` cycles of the compute
clock whatever the number of resident keys; loading a key tile costs ``bits / write_bits_per_cycle`` cycles of the
write clock (array writes are ordinary SRAM writes, faster than charge-domain compute). Rule costs: a
threshold is free (the comparator's reference); a margin needs the row maximum (a max tree when the head's keys
fit in one tile, else a whole second scoring pass); top-k needs the scores read out and sorted.
"""

from __future__ import annotations

import numpy as np

from soc.hw.base import Block, Port, register

RULE_CODES = {"none": 0, "threshold": 1, "margin": 2, "topk": 3}


@register("cim", "charge_cim")
class ChargeCim(Block):
    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self.array: Port = self.port()
        self._cycle_ns = 1.0 / cfg.clock_ghz
        self._write_cycle_ns = 1.0 / cfg.write_clock_ghz

    def key_tile(self, head_dim: int) -> int:
        return self.cfg.key_tile(head_dim)

    def write_ns(self, key_count: np.ndarray, head_dim: int) -> np.ndarray:
        bits = key_count * head_dim * self.cfg.key_bits
        return np.ceil(bits / self.cfg.write_bits_per_cycle) * self._write_cycle_ns

    def score_ns(self, q_rows: np.ndarray, k_cols: np.ndarray, rule_code: np.ndarray,
                 key_tiles_per_head: np.ndarray) -> np.ndarray:
        """Scoring time of each chunk, including what its pruning rule costs (vectorized over chunks)."""
        cfg = self.cfg
        cycles = q_rows * self.base_cycles_per_query(k_cols)
        multi = key_tiles_per_head > 1
        margin = rule_code == RULE_CODES["margin"]
        # margin over several key tiles: a first pass finds the row max, the second compares against it
        cycles = np.where(margin & multi, 2 * cycles, cycles)
        cycles = np.where(margin & ~multi, cycles + q_rows * cfg.max_tree_cycles, cycles)
        topk = rule_code == RULE_CODES["topk"]
        cycles = np.where(topk, cycles + q_rows * np.ceil(k_cols / cfg.sorter_scores_per_cycle), cycles)
        return cycles * self._cycle_ns

    def set_head_dim(self, head_dim: int) -> None:
        """The analog array's cost does not depend on it; scorers that compute per element do."""

    def base_cycles_per_query(self, k_cols: np.ndarray) -> np.ndarray:
        """Bit-serial query steps, then the comparators: every resident key at once."""
        return np.full(np.shape(k_cols), self.cfg.query_bits + self.cfg.compare_cycles, dtype=np.float64)

    def record_chunk(self, macs: float, compares: float, write_bits: float) -> None:
        self.count("macs", macs)
        self.count("compares", compares)
        self.count("write_bits", write_bits)

    def dynamic_energy_pj(self) -> dict[str, float]:
        c, cfg = self.counts, self.cfg
        return {"mac": c.get("macs", 0.0) * cfg.mac_pj, "compare": c.get("compares", 0.0) * cfg.compare_pj,
                "array_write": c.get("write_bits", 0.0) * cfg.write_pj_per_bit}
