"""What every hardware block shares: the block base class, one interface per config section, the cost helpers,
and the registry of block kinds. The timing primitives (ports, bank claims, ``hold``, FIFOs) are in
``soc.hw.ports`` and re-exported here. A ``Block`` owns ports and counters and its cost rule; it never imports
another block. Each config section has
a small interface here (``Scorer``, ``Processor``, ``Buffer``, ``Memory``, ``Network``) with the hooks the system
calls; a new kind subclasses one and registers with ``@register("section", "kind")``.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np
import simpy

from soc import rules
from soc.errors import WiringError
from soc.hw.ports import (CLAIMED, BankArray, BankSet, Fifo, MemAccess, Port, hold,  # noqa: F401 (re-exported)
                          next_order)
from soc.recorder import Recorder
from soc.tech import cost, load_tech

class Block:
    """Base of every block: a scoped name, ports, counters, and its own cost rule.

    The cost rule has three parts, all owned here and nowhere else: ``energy_pj(counts)`` turns event counts
    (scalars, or per-tile arrays for the timeline) into energy by event class; ``static_mw`` and ``area_mm2``.
    ``result()`` returns the block's own statistics (as desmod's result hooks): whoever reads results calls
    it, never re-derives it.
    """

    section: ClassVar[str]
    kind: ClassVar[str]
    claim_rank: ClassVar[int] = 3

    def __init__(self, env: simpy.Environment, name: str, cfg: Any, recorder: Recorder) -> None:
        self.env = env
        self.name = name
        self.cfg = cfg
        self.recorder = recorder
        self.counts: dict[str, float] = {}
        self.ports: list[Port] = []

    def port(self, suffix: str = "") -> Port:
        p = Port(self.env, f"{self.name}{'.' + suffix if suffix else ''}", self.recorder, self.claim_rank)
        self.ports.append(p)
        return p

    def count(self, key: str, amount: float) -> None:
        self.counts[key] = self.counts.get(key, 0.0) + amount

    # --- the cost rule -----------------------------------------------------------------------------------
    tech: Any = None  # the technology table (soc.tech.Tech), set by the system before the run

    @classmethod
    def cost_rule(cls, cfg: Any, tech: Any) -> dict[str, dict[str, Any]]:
        """The block's cost sheet from its own size and precision parameters and the technology table: each
        figure ``{value, unit, source}`` (``user`` when the config gives it). Kinds override this law."""
        return {"area_mm2": cost(getattr(cfg, "area_mm2", None), 0.0, "no area law for this kind", "mm2"),
                "static_mw": cost(getattr(cfg, "static_mw", None), 0.0, "no leakage law for this kind", "mW")}

    def cost_sheet(self) -> dict[str, dict[str, Any]]:
        sheet = self.__dict__.get("_sheet")
        if sheet is None:
            sheet = self._sheet = self.cost_rule(self.cfg, self.tech if self.tech is not None else load_tech())
        return sheet

    def cost_value(self, key: str) -> float:
        return self.cost_sheet()[key]["value"]

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        """Energy by event class for the event ``counts`` (the block's own counter names; scalars or per-tile
        arrays): the only place this block's energy is computed."""
        return {}

    def dynamic_energy_pj(self) -> dict[str, float]:
        """Energy by event class of what the block did in this run."""
        return self.energy_pj(self.counts)

    @property
    def static_mw(self) -> float:
        return self.cost_value("static_mw")

    @property
    def area_mm2(self) -> float:
        return self.cost_value("area_mm2")

    # --- what readers of results call ----------------------------------------------------------------------
    def busy_ns(self) -> float:
        """Busy time of the block: its ports' work divided over the ports (so utilization stays in [0, 1])."""
        if not self.ports:
            return 0.0
        return sum(p.busy_ns for p in self.ports) / len(self.ports)

    def result(self) -> dict[str, Any]:
        """The block's own statistics at the end of a run."""
        return {"section": self.section, "kind": self.kind, "busy_ns": self.busy_ns(), "counts": dict(self.counts),
                "energy_pj": self.dynamic_energy_pj(), "static_mw": self.static_mw, "area_mm2": self.area_mm2,
                "costs": self.cost_sheet()}


def logic_leak_mw(area_um2: float, tech: Any) -> float:
    """Leakage of standard-cell logic: area x the node's leakage density."""
    return area_um2 * tech["logic_leak_nw_per_um2"] * 1e-6


def clock_mw(reg_bits: float, clock_ghz: float, tech: Any) -> float:
    """Clock power of ``reg_bits`` flip-flops toggled every cycle (no clock gating): fJ x GHz = uW."""
    return reg_bits * tech["clock_fj_per_reg_bit"] * clock_ghz * 1e-3


def sram_pj_per_byte(bank_bytes: float, tech: Any) -> float:
    """Read energy per byte of an SRAM bank: the table's reference bank scaled by (size ratio)^exponent
    (longer bitlines and wordlines, CACTI's trend)."""
    return tech["sram_read_pj_per_byte"] * (bank_bytes / tech["sram_ref_bank_bytes"]) ** tech["sram_energy_exponent"]


# --- one small interface per block section: the hooks the system calls ------------------------------------
class Scorer(Block):
    """Scores every query of a tile against the keys resident in it and decides keep/prune (section ``cim``).

    Hooks: ``key_tile(head_dim)``; ``write_ns(keys, head_dim)`` to load keys; ``score_ns(...)`` per chunk,
    which adds what the pruning rule costs (soc/rules.py says which rule needs what) to
    ``base_cycles_per_query``, the one hook a new scorer must give; ``record_chunk`` after each chunk.
    """

    def scoring_energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        """The scorers' event law: MACs, comparator decisions and array-write bits at the block's own prices."""
        return {"mac": counts.get("macs", 0.0) * self.cost_value("mac_pj"),
                "compare": counts.get("compares", 0.0) * self.cost_value("compare_pj"),
                "array_write": counts.get("write_bits", 0.0) * self.cost_value("write_pj_per_bit")}

    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self.array: Port = self.port()
        self._cycle_ns = 1.0 / cfg.clock_ghz
        self._write_cycle_ns = 1.0 / cfg.write_clock_ghz
        self._head_dim = 0

    def key_tile(self, head_dim: int) -> int:
        return self.cfg.key_tile(head_dim)

    def set_head_dim(self, head_dim: int) -> None:
        self._head_dim = head_dim

    def write_ns(self, key_count: np.ndarray, head_dim: int) -> np.ndarray:
        bits = key_count * head_dim * self.cfg.key_bits
        return np.ceil(bits / self.cfg.write_bits_per_cycle) * self._write_cycle_ns

    def base_cycles_per_query(self, k_cols: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_ns(self, q_rows: np.ndarray, k_cols: np.ndarray, rule_code: np.ndarray,
                 key_tiles_per_head: np.ndarray) -> np.ndarray:
        """Scoring time of each chunk, including what its pruning rule costs (vectorized over chunks)."""
        cfg = self.cfg
        cycles = q_rows * self.base_cycles_per_query(k_cols)
        cycles = cycles * rules.scoring_passes(rule_code, key_tiles_per_head)
        cycles = np.where(rules.needs_max_tree(rule_code, key_tiles_per_head), cycles + q_rows * cfg.max_tree_cycles,
                          cycles)
        cycles = np.where(rules.needs_sorter(rule_code),
                          cycles + q_rows * np.ceil(k_cols / cfg.sorter_scores_per_cycle), cycles)
        return cycles * self._cycle_ns

    def record_chunk(self, macs: float, compares: float, write_bits: float) -> None:
        self.count("macs", macs)
        self.count("compares", compares)
        self.count("write_bits", write_bits)


class Processor(Block):
    """Computes exact attention for a tile's kept pairs (section ``digital``).

    Hooks: ``compute_ns(pairs_kept, rows_kept, head_dim)`` per chunk (vectorized); ``record_job`` after each.
    ``macs`` is the port the system holds while a job computes.
    """

    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self.macs: Port = self.port()

    def compute_ns(self, pairs_kept: np.ndarray, rows_kept: np.ndarray, head_dim: int) -> np.ndarray:
        raise NotImplementedError

    def record_job(self, macs: float, exps: float) -> None:
        self.count("macs", macs)
        self.count("exps", exps)


class Buffer(Block):
    """Passes tiles from the scorer to the processor (section ``token_buffer``): ``put`` (a process step that
    waits while full) and ``get`` (waits while empty); ``peak`` is the most entries it held."""

    peak: int = 0

    def put(self, item: Any, entry_bytes: float):
        raise NotImplementedError

    def get(self):
        raise NotImplementedError


class Memory(Block):
    """On-chip SRAM or off-chip DRAM (sections ``sram``, ``dram``): ``access(nbytes, write, where)`` counts the
    access and returns the (port, duration) jobs it occupies."""

    def bytes_energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        """Energy of bytes read and written at the block's own per-byte prices."""
        return {"read": counts.get("read_bytes", 0.0) * self.cost_value("read_pj_per_byte"),
                "write": counts.get("write_bytes", 0.0) * self.cost_value("write_pj_per_byte")}

    def access(self, nbytes: float, write: bool, where: tuple[MemAccess, ...] | None = None) -> list:
        raise NotImplementedError


class Network(Block):
    """The on-chip interconnect (section ``interconnect``): ``check_nodes``, ``add_route`` at elaboration and
    ``transfer(src, dst, nbytes)`` returning the (port, duration) jobs of the route."""

    routes: dict[tuple[str, str], list[tuple[str, str]]]

    def check_nodes(self, blocks: set[str]) -> None:
        raise NotImplementedError

    def add_route(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def transfer(self, src: str, dst: str, nbytes: float) -> list:
        raise NotImplementedError


_REGISTRY: dict[tuple[str, str], type[Block]] = {}


def register(section: str, kind: str) -> Callable[[type[Block]], type[Block]]:
    def deco(cls: type[Block]) -> type[Block]:
        cls.section, cls.kind = section, kind
        _REGISTRY[(section, kind)] = cls
        return cls
    return deco


def block_class(section: str, kind: str) -> type[Block]:
    try:
        return _REGISTRY[(section, kind)]
    except KeyError:
        known = sorted(k for s, k in _REGISTRY if s == section)
        raise WiringError(f"{section}.kind: no block kind {kind!r} (registered: {', '.join(known)})") from None


def registered(section: str | None = None) -> Iterable[tuple[str, str]]:
    return sorted(k for k in _REGISTRY if section is None or k[0] == section)

