"""On-chip SRAM banks and the off-chip DRAM (bandwidth-latency model).

SRAM: ``banks`` banks of ``width_bytes`` per cycle, one port each; consecutive addresses interleave across banks,
so an access of B bytes from address a occupies the banks it touches for ``ceil(B / (banks_touched * width))``
cycles, and two accesses that share a bank serialize. DRAM (``simple``): one channel that serves an access in
``latency_ns + bytes / bandwidth``.
"""

from __future__ import annotations

import math

from soc.hw.base import BankArray, BankSet, Block, MemAccess, Port, next_order, register


@register("sram", "banked")
class BankedSram(Block):
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

    @property
    def energy_scale(self) -> float:
        """Per-byte energy relative to the reference bank size: sqrt of the size ratio."""
        return math.sqrt(self.cfg.bank_bytes / self.cfg.reference_bank_bytes)

    def dynamic_energy_pj(self) -> dict[str, float]:
        c, cfg, k = self.counts, self.cfg, self.energy_scale
        return {"read": c.get("read_bytes", 0.0) * cfg.read_pj_per_byte * k,
                "write": c.get("write_bytes", 0.0) * cfg.write_pj_per_byte * k}


@register("dram", "simple")
class SimpleDram(Block):
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

    def dynamic_energy_pj(self) -> dict[str, float]:
        c, cfg = self.counts, self.cfg
        return {"read": c.get("read_bytes", 0.0) * cfg.read_pj_per_byte,
                "write": c.get("write_bytes", 0.0) * cfg.write_pj_per_byte}
