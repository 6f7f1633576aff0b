"""Technology tables: the energy, area and leakage of circuit primitives at one process node.

A table (``configs/tech/<name>.yaml``, format ``soc.tech/1``) lists entries ``key: {value, unit, source, low,
high}``: ``source`` starts with ``published:``, ``derived:`` or ``assumed:`` and names its citation; ``low`` and
``high`` (optional) bound the value (the band ``soc paper`` prints). A SoC config picks a table with ``tech:``
and a corner with ``tech_corner:`` (typical, low or high: every ranged entry at that end). Blocks derive their
area, leakage and per-event energy from these entries (soc/hw); nothing else reads them.

``cost(explicit, value, law, unit)`` is how every block states one derived figure: an explicit config value
wins and is marked ``user``; otherwise the value carries its law with the numbers put in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from soc.errors import ConfigError

FORMAT = "soc.tech/1"
TAGS = ("published", "derived", "assumed")
CORNERS = ("typical", "low", "high")
# every table must define these (the blocks' laws read them)
REQUIRED = (
    "mult_pj_per_bit2", "mult_um2_per_bit2", "add_pj_per_bit", "add_um2_per_bit", "exp_pj", "exp_um2",
    "reg_bit_pj", "reg_bit_um2", "clock_fj_per_reg_bit", "logic_leak_nw_per_um2",
    "sram_read_pj_per_byte", "sram_ref_bank_bytes", "sram_energy_exponent", "sram_write_over_read",
    "sram_bitcell_um2", "sram_array_efficiency", "sram_leak_pw_per_bit",
    "regfile_bit_um2", "regfile_pj_per_bit",
    "cim_cell_um2", "cim_cell_step_fj", "comparator_pj", "comparator_um2", "wordline_driver_um2",
    "wire_pj_per_bit_mm", "io_pad_um2",
)


@dataclass(frozen=True)
class Entry:
    value: float
    unit: str
    source: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Tech:
    """One node's primitives; ``tech[key]`` is the value at the table's corner (overrides applied)."""
    name: str
    path: str
    node_nm: int
    entries: Mapping[str, Entry]
    corner: str = "typical"
    overrides: Mapping[str, float] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        if key in self.overrides:
            return float(self.overrides[key])
        try:
            e = self.entries[key]
        except KeyError:
            raise ConfigError(f"{self.path}: entries.{key}: missing (a block's cost law needs it)") from None
        if self.corner == "low" and e.low is not None:
            return e.low
        if self.corner == "high" and e.high is not None:
            return e.high
        return e.value

    def at(self, corner: str | None = None, overrides: Mapping[str, float] | None = None) -> "Tech":
        """The same table at another corner and/or with some entries replaced (e.g. fitted ones)."""
        if corner is not None and corner not in CORNERS:
            raise ConfigError(f"tech_corner: expected one of {', '.join(CORNERS)}, got {corner!r}")
        unknown = [k for k in (overrides or {}) if k not in self.entries]
        if unknown:
            raise ConfigError(f"tech_overrides.{unknown[0]}: no such entry in {self.path} "
                              f"(entries: {', '.join(sorted(self.entries))})")
        return Tech(self.name, self.path, self.node_nm, self.entries, corner or self.corner,
                    {**self.overrides, **(overrides or {})})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.path, "node_nm": self.node_nm, "corner": self.corner,
                "overrides": dict(self.overrides)}


def tech_path(name: str) -> Path:
    """A table by bare name (configs/tech/<name>.yaml) or by path."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    return Path(__file__).resolve().parent.parent / "configs" / "tech" / f"{name}.yaml"  # the package root


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ConfigError(f"{where}: expected a finite number >= 0, got {v!r}")
    return float(v)


def parse_tech(data: Any, path: str, name: str) -> Tech:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with format, node_nm and entries")
    if data.get("format") != FORMAT:
        raise ConfigError(f"{path}: format: expected {FORMAT!r}, got {data.get('format')!r}")
    node = data.get("node_nm")
    if isinstance(node, bool) or not isinstance(node, int) or node < 1:
        raise ConfigError(f"{path}: node_nm: expected an integer >= 1, got {node!r}")
    raw = data.get("entries")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: entries: expected a mapping of key -> {{value, unit, source}}")
    entries = {}
    for key, e in raw.items():
        where = f"{path}: entries.{key}"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: expected a mapping with value, unit and source")
        extra = set(e) - {"value", "unit", "source", "low", "high"}
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown field (expected value, unit, source, low, high)")
        value = _number(e.get("value"), f"{where}.value")
        unit, source = e.get("unit"), e.get("source")
        if not isinstance(unit, str) or not unit:
            raise ConfigError(f"{where}.unit: expected a unit such as pJ or um2, got {unit!r}")
        if not isinstance(source, str) or source.split(":", 1)[0].strip() not in TAGS or ":" not in source:
            raise ConfigError(f"{where}.source: expected text starting with published:, derived: or assumed: "
                              f"and naming its citation, got {source!r}")
        low = _number(e["low"], f"{where}.low") if e.get("low") is not None else None
        high = _number(e["high"], f"{where}.high") if e.get("high") is not None else None
        if (low is not None and low > value) or (high is not None and high < value):
            raise ConfigError(f"{where}: expected low <= value <= high, got {low} <= {value} <= {high}")
        entries[key] = Entry(value, unit, source, low, high)
    missing = [k for k in REQUIRED if k not in entries]
    if missing:
        raise ConfigError(f"{path}: entries.{missing[0]}: missing (required: {', '.join(REQUIRED)})")
    return Tech(name=name, path=path, node_nm=node, entries=entries)


@lru_cache(maxsize=16)
def _load(path: str, name: str) -> Tech:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"tech: no technology table {path} (bundled: configs/tech/65nm.yaml, 28nm.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_tech(data, path, name)


def load_tech(name: str = "65nm", corner: str = "typical", overrides: Mapping[str, float] | None = None) -> Tech:
    """The table ``name`` (configs/tech/<name>.yaml, or a path), at ``corner``, with ``overrides``."""
    path = tech_path(name)
    return _load(str(path), name).at(corner, overrides)


def tech_of(cfg: Any) -> Tech:
    """The table a SoC config selects (``tech``, ``tech_corner``, ``tech_overrides``)."""
    return load_tech(cfg.tech, cfg.tech_corner, cfg.tech_overrides)


def cost(explicit: float | None, value: float, law: str, unit: str) -> dict[str, Any]:
    """One figure of a block's cost sheet: the config's explicit value (``user``) or the derived one."""
    if explicit is not None:
        return {"value": float(explicit), "unit": unit, "source": "user"}
    return {"value": float(value), "unit": unit, "source": f"derived: {law}"}


def unmodelled(cfg: Any, tech: Tech, blocks_mm2: float) -> dict[str, Any]:
    """What the die holds besides the modelled blocks, as the ``other`` result: I/O pads and the share of the
    core that placement leaves unfilled (area, from stated physics); control, test and I/O bias power are not
    modelled (unknown: 0 unless the config states a value, then ``user``)."""
    pads_mm2 = cfg.io_pads * tech["io_pad_um2"] * 1e-6
    spare_mm2 = blocks_mm2 * (1.0 / cfg.core_utilization - 1.0)
    costs = {
        "area_mm2": cost(cfg.other_area_mm2, pads_mm2 + spare_mm2,
                         f"{cfg.io_pads} I/O pads x {tech['io_pad_um2']:g} um2 + the blocks' {blocks_mm2:.4f} mm2 x "
                         f"(1 / core_utilization {cfg.core_utilization:g} - 1)", "mm2"),
        "static_mw": cost(cfg.other_static_mw, 0.0, "not modelled: control, test and I/O bias power are unknown "
                          "(counted as 0)", "mW"),
    }
    return {"section": "other", "kind": "unmodelled", "busy_ns": 0.0, "counts": {}, "energy_pj": {},
            "static_mw": costs["static_mw"]["value"], "area_mm2": costs["area_mm2"]["value"], "costs": costs}
