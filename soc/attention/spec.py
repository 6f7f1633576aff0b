"""Typed parameters of the functional model: the CIM's quantization and the pruning rule of each layer.

The analog array stores the top ``key_bits`` of each key and is driven by the top ``query_bits`` of each
query (both taken from a symmetric ``full_bits`` quantization). Its comparator decides, per (query, key) pair,
whether the digital processor will compute that pair exactly. The decision rule is per layer:

- ``none``: every causally valid pair is kept (dense attention);
- ``threshold``: keep iff the approximate score reaches a reference (fixed, per head, or calibrated to a
  target kept fraction); one comparator pass, and a row may end up empty;
- ``margin``: keep iff the approximate score is within ``margin`` logits of its row maximum (needs the max);
- ``topk``: keep the ``k`` best keys of each row (needs a sorter).

Every dataclass is frozen and validated on construction; a bad field raises :class:`SpecError`, which is both
a :class:`ValueError` and the project's :class:`~soc.errors.ConfigError` (so the CLI exits with status 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from soc.errors import ConfigError

RULES = ("none", "threshold", "margin", "topk")
ROUNDINGS = ("floor", "round", "center")
GRANULARITIES = ("head", "layer")


class SpecError(ConfigError, ValueError):
    """A functional-model parameter is out of range; the message names the field and the bad value."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class CimQuantSpec:
    """How Q and K are quantized for the analog array, and its errors (see :mod:`soc.attention.approx`).

    ``rounding``: how the MSBs stand for the dropped LSBs (floor, round, center). Thermal noise per
    evaluation: ``noise_sigma_lsb`` (LSB of the integer dot product) and ``noise_fraction_fs`` (fraction of
    the array's full scale), combined in quadrature. Fixed pattern of chip ``chip_seed``: per-column gain
    error (relative sigma ``gain_sigma_fraction``) and comparator offset (sigma ``offset_fraction_fs`` of full scale);
    the array's geometry (``array_rows`` x ``array_cols``) fixes which column each key lands in.
    """

    query_bits: int = 4
    key_bits: int = 4
    full_bits: int = 8
    noise_sigma_lsb: float = 0.0
    rounding: str = "center"
    noise_fraction_fs: float = 0.0
    gain_sigma_fraction: float = 0.0
    offset_fraction_fs: float = 0.0
    chip_seed: int = 0
    array_rows: int = 128
    array_cols: int = 128
    cores: int = 1  # CIM cores, each with its own fixed pattern; heads are dealt round-robin to them

    def __post_init__(self) -> None:
        if not _is_int(self.full_bits) or not 2 <= self.full_bits <= 16:
            raise SpecError(f"full_bits: expected an integer in [2, 16], got {self.full_bits!r}")
        for name in ("query_bits", "key_bits"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= 8:
                raise SpecError(f"{name}: expected an integer in [1, 8], got {value!r}")
            if value > self.full_bits:
                raise SpecError(f"{name}: expected at most full_bits ({self.full_bits}), got {value!r}")
        if self.rounding not in ROUNDINGS:
            raise SpecError(f"rounding: expected one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        for name in ("noise_sigma_lsb", "noise_fraction_fs", "gain_sigma_fraction", "offset_fraction_fs"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise SpecError(f"{name}: expected a finite number >= 0, got {value!r}")
        if not _is_int(self.chip_seed) or self.chip_seed < 0:
            raise SpecError(f"chip_seed: expected an integer >= 0, got {self.chip_seed!r}")
        for name in ("array_rows", "array_cols", "cores"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SpecError(f"{name}: expected an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class LayerRule:
    """The pruning rule of one layer.

    Fields a rule does not use are ignored, so switching ``rule`` alone (e.g. by an override) stays valid.
    For ``threshold`` the reference comes from, in order of precedence: ``threshold_per_head`` (fixed, one per
    head), ``threshold`` (fixed, all heads), ``target_kept_fraction`` (calibrated per ``granularity``).
    For ``topk``, ``topk_keys`` overrides ``target_kept_fraction``.
    """

    rule: str
    target_kept_fraction: float | None = None
    threshold: float | None = None
    threshold_per_head: tuple[float, ...] | None = None
    margin: float | None = None
    topk_keys: int | None = None
    granularity: str = "head"
    keep_sink_tokens: int = 0     # the first N keys always survive (attention sinks)
    keep_recent_tokens: int = 0   # keys within N positions up to the query's own always survive (1: itself)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise SpecError(f"rule: expected one of {', '.join(RULES)}, got {self.rule!r}")
        if self.granularity not in GRANULARITIES:
            raise SpecError(f"granularity: expected one of {', '.join(GRANULARITIES)}, "
                            f"got {self.granularity!r}")
        frac = self.target_kept_fraction
        if frac is not None and (not _is_real(frac) or not 0.0 < frac <= 1.0):
            raise SpecError(f"target_kept_fraction: expected a number in (0, 1], got {frac!r}")
        if self.threshold is not None and not _is_real(self.threshold):
            raise SpecError(f"threshold: expected a finite number (softmax-logit units), "
                            f"got {self.threshold!r}")
        if self.threshold_per_head is not None:
            given = self.threshold_per_head
            values = tuple(given) if isinstance(given, (list, tuple)) else None
            if not values or not all(_is_real(v) for v in values):
                raise SpecError("threshold_per_head: expected a non-empty list of finite numbers, "
                                f"got {self.threshold_per_head!r}")
            object.__setattr__(self, "threshold_per_head", tuple(float(v) for v in values))
        if self.margin is not None and (not _is_real(self.margin) or self.margin < 0):
            raise SpecError(f"margin: expected a finite number >= 0 (softmax-logit units), "
                            f"got {self.margin!r}")
        for name in ("keep_sink_tokens", "keep_recent_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise SpecError(f"{name}: expected an integer >= 0, got {value!r}")
        if self.topk_keys is not None and (not _is_int(self.topk_keys) or self.topk_keys < 1):
            raise SpecError(f"topk_keys: expected an integer >= 1, got {self.topk_keys!r}")
        # Each rule needs its own parameter; say which one is missing.
        no_reference = self.threshold is None and self.threshold_per_head is None
        if self.rule == "threshold" and frac is None and no_reference:
            raise SpecError("threshold: rule 'threshold' needs target_kept_fraction, threshold or "
                            "threshold_per_head, got none of them")
        if self.rule == "margin" and self.margin is None:
            raise SpecError("margin: rule 'margin' needs a margin (softmax-logit units), got None")
        if self.rule == "topk" and self.topk_keys is None and frac is None:
            raise SpecError("topk_keys: rule 'topk' needs topk_keys or target_kept_fraction, got neither")

    @property
    def threshold_source(self) -> str:
        """Where a threshold rule's reference comes from: 'per_head', 'fixed', 'calibrated' or ''."""
        if self.rule != "threshold":
            return ""
        if self.threshold_per_head is not None:
            return "per_head"
        return "fixed" if self.threshold is not None else "calibrated"

    def describe(self) -> dict:
        """The parameters this rule actually uses, JSON-ready."""
        out: dict = {"rule": self.rule}
        if self.rule == "threshold":
            out["threshold_source"] = self.threshold_source
            if self.threshold_source == "calibrated":
                out["target_kept_fraction"] = self.target_kept_fraction
                out["granularity"] = self.granularity
        elif self.rule == "margin":
            out["margin"] = self.margin
        elif self.rule == "topk":
            if self.topk_keys is not None:
                out["topk_keys"] = self.topk_keys
            else:
                out["target_kept_fraction"] = self.target_kept_fraction
        if self.rule != "none" and (self.keep_sink_tokens or self.keep_recent_tokens):
            out["keep_sink_tokens"] = self.keep_sink_tokens
            out["keep_recent_tokens"] = self.keep_recent_tokens
        return out


@dataclass(frozen=True)
class PruningSpec:
    """The pruning rule of every layer (a default plus overrides) and the CIM quantization behind it."""

    default: LayerRule
    per_layer: tuple[tuple[int, LayerRule], ...] = ()
    quant: CimQuantSpec = field(default_factory=CimQuantSpec)

    def __post_init__(self) -> None:
        if not isinstance(self.default, LayerRule):
            raise SpecError(f"default: expected a LayerRule, got {type(self.default).__name__}")
        if not isinstance(self.quant, CimQuantSpec):
            raise SpecError(f"quant: expected a CimQuantSpec, got {type(self.quant).__name__}")
        items = tuple(self.per_layer.items()) if isinstance(self.per_layer, dict) else tuple(self.per_layer)
        seen: set[int] = set()
        for entry in items:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise SpecError(f"per_layer: expected (layer, LayerRule) pairs, got {entry!r}")
            layer, rule = entry
            if not _is_int(layer) or layer < 0:
                raise SpecError(f"per_layer: expected a layer index >= 0, got {layer!r}")
            if not isinstance(rule, LayerRule):
                raise SpecError(f"per_layer[{layer}]: expected a LayerRule, got {type(rule).__name__}")
            if layer in seen:
                raise SpecError(f"per_layer: layer {layer} is given twice")
            seen.add(layer)
        object.__setattr__(self, "per_layer", tuple(sorted(items, key=lambda e: e[0])))

    def for_layer(self, layer: int) -> LayerRule:
        """The rule of ``layer``: its override if there is one, else the default."""
        for index, rule in self.per_layer:
            if index == layer:
                return rule
        return self.default
