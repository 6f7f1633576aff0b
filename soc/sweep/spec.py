"""Sweep specifications: which design points of the SoC to simulate, on which workloads, with which seeds.

A design-space sweep varies a few configuration parameters of one base SoC (the paper's chip, say) over value
lists and replays one or more workload traces at every point. ``SWEEP.yaml``:

    base: ../configs/hybrid65nm.yaml          # config path (relative to this file) or a bundled config name
    traces:                                   # trace paths, or synthetic specs made inside the worker
      - ../traces/minilm-l6-lighthouse.npz
      - {workload: bert-base, seq_len: 256, layers: 2, seed: 0}
    factors:                                  # dotted config key -> list of values
      pruning.target_kept_fraction: [0.15, 0.25, 0.4]
      dataflow.q_tile_rows: [16, 32]
    mode: product                             # product: every combination; zip: the i-th values together
    seed: 0                                   # base seed of the analog noise
    replicates: 1                             # noise draws per (factor values, trace)

Seeds: a point's seed is derived from (base seed, trace, replicate index) only, not from the factor values, so
every design point of one trace sees the same analog-noise draw (common random numbers): differences between
points come from the design, not from the noise. A point's id is a stable hash of (factor values, trace,
seed), the same on every machine and every run, which is what makes a sweep resumable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from soc.config.fields import show
from soc.config.loader import load_config, read_yaml, resolve_bundled, resolve_config_path
from soc.errors import ConfigError, SocError

MODES = ("product", "zip")
TOP_KEYS = ("name", "description", "base", "traces", "factors", "mode", "seed", "replicates")
SYNTH_KEYS = ("workload", "seq_len", "layers", "seed", "mode", "prompt", "generate")
MAX_POINTS = 100_000  # a typo in a value list must not silently ask for days of simulation (at ~1 s a point)


@dataclass(frozen=True)
class TraceRef:
    """A workload trace as the worker will obtain it: a file it loads by path, or a synthetic spec it builds.

    ``key`` names the trace in results.csv and in point ids: the path as written in the sweep file, or
    ``synth:workload=...,seq_len=...`` for a synthetic one (stable across machines and working
    directories)."""

    key: str
    path: str | None = None  # absolute path of a trace file or directory
    synth: tuple[tuple[str, Any], ...] | None = None  # synth_trace keyword arguments, workload first


@dataclass(frozen=True)
class Point:
    """One design point: the base config with ``overrides`` applied, replayed on ``trace`` with ``seed``."""

    id: str
    factors: tuple[tuple[str, Any], ...]  # (dotted key, value) in the sweep file's factor order
    trace: TraceRef
    seed: int
    replicate: int

    @property
    def overrides(self) -> tuple[str, ...]:
        return tuple(override_text(key, value) for key, value in self.factors)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file; ``points()`` expands it in a fixed order (trace, then factor combinations)."""

    path: str
    name: str
    base: str  # absolute config path
    traces: tuple[TraceRef, ...]
    factors: tuple[tuple[str, tuple[Any, ...]], ...]
    mode: str
    seed: int
    replicates: int

    @property
    def factor_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.factors)

    def combinations(self) -> list[tuple[tuple[str, Any], ...]]:
        keys = self.factor_keys
        lists = [values for _, values in self.factors]
        rows = itertools.product(*lists) if self.mode == "product" else zip(*lists, strict=True)
        return [tuple(zip(keys, row, strict=True)) for row in rows]

    def points(self) -> list[Point]:
        out = []
        combos = self.combinations()
        for trace in self.traces:
            for rep in range(self.replicates):
                seed = derive_seed(self.seed, trace.key, rep)
                out.extend(Point(id=point_id(combo, trace.key, seed), factors=combo, trace=trace, seed=seed,
                                 replicate=rep) for combo in combos)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "base": self.base, "mode": self.mode, "seed": self.seed,
                "replicates": self.replicates,
                "traces": [{"key": t.key, "path": t.path, "synth": dict(t.synth) if t.synth else None}
                           for t in self.traces],
                "factors": {key: list(values) for key, values in self.factors}}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def derive_seed(base_seed: int, trace_key: str, replicate: int) -> int:
    """A 31-bit seed from (base seed, trace, replicate): deterministic, independent of the factor values."""
    digest = hashlib.sha256(_canonical([base_seed, trace_key, replicate]).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def point_id(factors: tuple[tuple[str, Any], ...], trace_key: str, seed: int) -> str:
    """A stable 16-hex-digit id of (factor values, trace, seed); the factor order does not matter."""
    payload = _canonical({"factors": {k: v for k, v in factors}, "trace": trace_key, "seed": seed})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def override_text(key: str, value: Any) -> str:
    """``key=value`` such that the config loader's YAML parse gives back ``value`` exactly (0.1, 'true',
    [1, 2])."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    if text.endswith("\n..."):  # a bare scalar document ends with an explicit end marker
        text = text[:-4].rstrip()
    return f"{key}={text}"


# --- parsing ------------------------------------------------------------------------------------------------
def _int(value: Any, where: str, lo: int, hi: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo
            or (hi is not None and value > hi)):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{where}: expected an integer {rng}, got {value!r}")
    return int(value)


def _local(path_text: str, folder: Path) -> Path:
    """A path relative to the sweep file's folder, else to the working directory."""
    path = Path(path_text).expanduser()
    if path.is_absolute():
        return path
    beside = folder / path
    return beside if beside.exists() or not path.exists() else path


def _base(value: Any, where: str, folder: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a config path or a bundled config name, got {value!r}")
    local = _local(value, folder)
    path = local if local.exists() else resolve_config_path(value)
    if not path.is_file():
        raise ConfigError(f"{where}: no such config file ({value!r}; looked in {folder} and configs/)")
    return path.resolve()


def _synth_trace(item: Mapping[str, Any], where: str) -> TraceRef:
    from soc.trace.workload import load_workload

    unknown = [k for k in item if k not in SYNTH_KEYS]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (expected one of {', '.join(SYNTH_KEYS)})")
    if not isinstance(item.get("workload"), str):
        raise ConfigError(f"{where}.workload: expected a workload name (workloads/NAME.yaml), "
                          f"got {item.get('workload')!r}")
    try:
        spec = load_workload(item["workload"])
    except SocError as exc:
        raise ConfigError(f"{where}.workload: {exc}") from None
    args: dict[str, Any] = {"workload": item["workload"]}
    limits = {"seq_len": spec.max_positions, "layers": spec.layers, "seed": 2**63 - 1,
              "prompt": spec.max_positions, "generate": spec.max_positions}
    for key in SYNTH_KEYS[1:]:
        if key not in item or item[key] is None:
            continue
        if key == "mode":
            if item[key] not in ("prefill", "decode"):
                raise ConfigError(f"{where}.mode: expected prefill or decode, got {item[key]!r}")
            args[key] = item[key]
        else:
            args[key] = _int(item[key], f"{where}.{key}", 0 if key == "seed" else 1, limits[key])
    args.setdefault("seed", 0)
    text = ",".join(f"{k}={v}" for k, v in args.items())
    return TraceRef(key=f"synth:{text}", synth=tuple(args.items()))


def _traces(value: Any, where: str, folder: Path) -> tuple[TraceRef, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of trace paths or synthetic specs, "
                          f"got {value!r}")
    out: list[TraceRef] = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(item, str) and item:
            path = _local(item, folder)
            if not path.exists():
                raise ConfigError(f"{at}: no such trace {item!r} (looked in {folder} and the working "
                                  f"directory)")
            out.append(TraceRef(key=item, path=str(path.resolve())))
        elif isinstance(item, Mapping):
            out.append(_synth_trace(item, at))
        else:
            raise ConfigError(f"{at}: expected a trace path or a mapping "
                              f"{{workload, seq_len, layers, seed}}, got {item!r}")
    keys = [t.key for t in out]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ConfigError(f"{where}: trace {dup!r} is listed twice")
    return tuple(out)


def _factors(value: Any, where: str, base: Path, mode: str = "product") -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of dotted.config.key -> list of values, "
                          f"got {value!r}")
    out = []
    for key, values in value.items():
        at = f"{where}.{key}"
        if not isinstance(key, str) or not key or not all(key.split(".")):
            raise ConfigError(f"{where}: expected dotted config keys (e.g. dataflow.q_tile_rows), "
                              f"got {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}: expected a non-empty list of values, got {show(values)}")
        seen: dict[str, int] = {}
        for i, v in enumerate(values):  # 1 and 1.0 make one config: the point would run twice
            try:
                same = _canonical(float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v)
            except (TypeError, ValueError, OverflowError):  # a date or NaN: load_config below says why
                same = repr(v)
            if same in seen and mode == "product":  # zip: a value may recur in another point
                raise ConfigError(f"{at}[{i}]: {show(v)} repeats the value at index {seen[same]}")
            seen[same] = i
        for i, v in enumerate(values):
            try:  # each value alone must make a valid config: a typo fails here, not in point 734
                load_config(base, [override_text(key, v)])
            except SocError as exc:
                raise ConfigError(f"{at}[{i}]: {v!r} is not a valid value ({exc})") from None
        out.append((key, tuple(values)))
    return tuple(out)


def _count_points(data: Mapping[str, Any], path: str, mode: str) -> None:
    factors = data.get("factors") or {}
    traces = data.get("traces")
    reps = data.get("replicates", 1)
    if not isinstance(factors, Mapping) or not isinstance(traces, list):
        return  # the detailed checks say what is wrong
    lengths = [len(v) for v in factors.values() if isinstance(v, list)]
    combos = (math.prod(lengths) if mode == "product" else max(lengths, default=1)) or 1
    n = combos * max(1, len(traces)) * (reps if isinstance(reps, int) and not isinstance(reps, bool) and reps > 0
                                        else 1)
    if n > MAX_POINTS:
        raise ConfigError(f"{path}: factors: {n:,} points, more than the limit of {MAX_POINTS:,}")


def parse_sweep(data: Any, path: str = "<sweep>", folder: Path | None = None) -> SweepSpec:
    """Validate a sweep mapping; every error names ``path`` and the key."""
    folder = folder if folder is not None else Path.cwd()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping with base, traces and factors, "
                          f"got {type(data).__name__}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (expected one of {', '.join(TOP_KEYS)})")
    for key in ("base", "traces"):
        if key not in data:
            what = "a config path" if key == "base" else "a list of traces"
            raise ConfigError(f"{path}: {key}: missing (expected {what})")
    base = _base(data["base"], f"{path}: base", folder)
    mode = data.get("mode", "product")
    if mode not in MODES:
        raise ConfigError(f"{path}: mode: expected product or zip, got {show(mode)}")
    _count_points(data, path, mode)  # before any config is loaded: a typo asking for 10^9 points fails at once
    try:  # the base alone: its own errors are its own, not a factor value's
        load_config(base)
    except SocError as exc:
        raise ConfigError(f"{path}: base: {exc}") from None
    factors = _factors(data.get("factors"), f"{path}: factors", base, mode)
    if mode == "zip" and factors:
        lengths = {key: len(values) for key, values in factors}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{path}: factors: mode zip needs value lists of one length, got "
                              + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
    name = data.get("name", Path(path).stem)
    if not isinstance(name, str):
        raise ConfigError(f"{path}: name: expected a string, got {name!r}")
    spec = SweepSpec(path=path, name=name, base=str(base),
                     traces=_traces(data["traces"], f"{path}: traces", folder), factors=factors, mode=mode,
                     seed=_int(data.get("seed", 0), f"{path}: seed", 0),
                     replicates=_int(data.get("replicates", 1), f"{path}: replicates", 1, 1000))
    n = len(spec.traces) * spec.replicates * (math.prod(len(v) for _, v in factors) if mode == "product"
                                              else (len(factors[0][1]) if factors else 1))
    if n > MAX_POINTS:
        raise ConfigError(f"{path}: factors: {n} points, more than the limit of {MAX_POINTS}")
    seen: set[str] = set()
    for combo in spec.combinations():
        text = _canonical(dict(combo))
        if text in seen:
            raise ConfigError(f"{path}: factors: the point {text} appears twice (a value listed twice?)")
        seen.add(text)
    return spec


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate ``SWEEP.yaml``; relative paths inside it are relative to its folder."""
    p = resolve_bundled(path, "sweeps", (".yaml", ".yml"))
    if not p.is_file():
        raise ConfigError(f"{show(str(p))[1:-1]}: no such sweep file")
    return parse_sweep(read_yaml(p), str(p), p.resolve().parent)
