"""The token buffer between the CIM core and the digital processor: a bounded FIFO of kept-token lists.

One entry is the keep bitmap of one tile (q_rows x k_cols bits). When it is full the CIM core waits
(back-pressure); when it is empty the digital side starves. Utilization is the time-averaged occupancy over
the capacity.

Cost law: a register file of depth_entries x entry_bytes: area = bits x [regfile_bit_um2]; energy per byte
written or read = 8 x [regfile_pj_per_bit]; leakage = area x [logic_leak_nw_per_um2].
"""

from __future__ import annotations

from typing import Any, Mapping

from soc.hw.base import Buffer, Fifo, logic_leak_mw, register
from soc.tech import cost


@register("token_buffer", "fifo")
class TokenBuffer(Buffer):
    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self.store = Fifo(env, max(1, cfg.depth_entries))
        self.capacity = cfg.depth_entries
        self._occupancy_area = 0.0  # integral of occupancy over time, entry*ns
        self._last_t = 0.0
        self._level = 0
        self.peak = 0
        self._counter = recorder.counter_fn(f"{name}.occupancy")

    def _level_changed(self, delta: int) -> None:
        now = self.env.now
        self._occupancy_area += self._level * (now - self._last_t)
        self._last_t = now
        self._level += delta
        self.peak = max(self.peak, self._level)
        if self._counter is not None:
            self._counter(now, self._level)

    def put(self, item, entry_bytes: float):
        yield from self.store.put(item)
        self.count("bytes", entry_bytes)
        self._level_changed(+1)

    def get(self):
        item = yield from self.store.get()
        self._level_changed(-1)
        return item

    def mean_occupancy(self, end_ns: float) -> float:
        area = self._occupancy_area + self._level * (end_ns - self._last_t)
        return area / end_ns if end_ns > 0 else 0.0

    def busy_ns(self) -> float:  # occupancy-weighted: a full buffer all the time is 100% used
        return self.mean_occupancy(self.env.now) / max(1, self.capacity) * self.env.now

    @classmethod
    def cost_rule(cls, cfg, tech) -> dict[str, dict[str, Any]]:
        bits = max(1, cfg.depth_entries) * cfg.entry_bytes * 8
        area_um2 = bits * tech["regfile_bit_um2"]
        return {
            "access_pj_per_byte": cost(cfg.access_pj_per_byte, 8 * tech["regfile_pj_per_bit"],
                                       "8 register-file bits", "pJ"),
            "area_mm2": cost(cfg.area_mm2, area_um2 * 1e-6, f"{bits} bits x {tech['regfile_bit_um2']:g} um2", "mm2"),
            "static_mw": cost(cfg.static_mw, logic_leak_mw(area_um2, tech), "leakage of its area", "mW"),
        }

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        # every entry is written once and read once
        return {"access": 2 * counts.get("bytes", 0.0) * self.cost_value("access_pj_per_byte")}

    def result(self) -> dict[str, Any]:
        return {**super().result(), "peak_entries": self.peak}
