"""Workload descriptions: the attention shape of a transformer model (``workloads/NAME.yaml``).

The accelerator's work per inference is fixed by a few numbers of the model: layers, query heads, key/value
heads (fewer than query heads under grouped-query attention), head dimension, causal masking, and the
sequence length. A workload file records them with the paper or model card they come from; the synthetic
trace generator and the reports read them from here.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from soc.config.loader import read_yaml

from soc.errors import ConfigError

FAMILIES = ("encoder", "decoder")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class WorkloadSpec:
    """A model's attention shape. ``family`` decides the synthetic attention pattern, ``causal`` the mask."""

    name: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    seq_len: int  # default sequence length for traces of this workload
    max_positions: int  # longest sequence the model accepts
    family: str
    source: str  # paper or model card the numbers come from
    description: str = ""
    path: str | None = field(default=None, compare=False)

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def from_dict(cls, d: Any, where: str = "<workload>") -> WorkloadSpec:
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping of workload keys, got {type(d).__name__}")
        known = {f.name for f in fields(cls)} - {"path"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: {unknown[0]}: unknown key (expected one of "
                              f"{', '.join(sorted(known))})")
        required = known - {"description", "kv_heads"}
        missing = sorted(required - set(d))
        if missing:
            raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
        out: dict[str, Any] = {}
        for key in ("name", "source", "description"):
            value = d.get(key, "")
            if not isinstance(value, str) or (key != "description" and not value.strip()):
                raise ConfigError(f"{where}: {key}: expected a non-empty string, got {value!r}")
            out[key] = value
        if not _NAME_RE.match(out["name"]):
            raise ConfigError(f"{where}: name: expected letters, digits, '.', '_' or '-', "
                              f"got {out['name']!r}")
        for key in ("layers", "heads", "kv_heads", "head_dim", "seq_len", "max_positions"):
            value = d.get(key, d["heads"]) if key == "kv_heads" else d[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"{where}: {key}: expected a positive integer, got {value!r}")
            out[key] = int(value)
        if not isinstance(d["causal"], bool):
            raise ConfigError(f"{where}: causal: expected true or false, got {d['causal']!r}")
        out["causal"] = d["causal"]
        if d["family"] not in FAMILIES:
            raise ConfigError(f"{where}: family: expected 'encoder' or 'decoder', got {d['family']!r}")
        out["family"] = d["family"]
        if out["heads"] % out["kv_heads"]:
            raise ConfigError(f"{where}: kv_heads: expected a divisor of heads={out['heads']}, "
                              f"got {out['kv_heads']}")
        if out["seq_len"] > out["max_positions"]:
            raise ConfigError(f"{where}: seq_len: expected <= max_positions={out['max_positions']}, "
                              f"got {out['seq_len']}")
        if out["causal"] != (out["family"] == "decoder"):
            raise ConfigError(f"{where}: causal: expected {out['family'] == 'decoder'} for a "
                              f"{out['family']}, got {out['causal']}")
        return cls(**out, path=None if where.startswith("<") else where)


def workload_dirs() -> list[Path]:
    """Where workload names are looked up: the repository's ``workloads/``, then ``./workloads``."""
    repo = Path(__file__).resolve().parents[2] / "workloads"  # soc/trace/workload.py -> repository root
    dirs = [repo]
    cwd = Path.cwd() / "workloads"
    if cwd.resolve() != repo.resolve():
        dirs.append(cwd)
    return dirs


def list_workloads() -> list[str]:
    """Names of every workload file found in :func:`workload_dirs`."""
    names = {p.stem for d in workload_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def load_workload(name_or_path: str | os.PathLike[str]) -> WorkloadSpec:
    """Load ``workloads/NAME.yaml`` by name, or a workload YAML file by path; validated."""
    text = os.fspath(name_or_path)
    is_path = isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or os.sep in text
    if is_path:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{path}: no such workload file")
    else:
        if not _NAME_RE.match(text):
            raise ConfigError(f"workload: expected a workload name or a .yaml path, got {text!r}")
        found = [d / f"{text}.yaml" for d in workload_dirs() if (d / f"{text}.yaml").is_file()]
        if not found:
            known = ", ".join(list_workloads()) or "none"
            raise ConfigError(f"workload: unknown name {text!r} (known: {known})")
        path = found[0]
    data = read_yaml(path)  # bounded: size, nesting and alias expansion (soc.config.loader)
    return WorkloadSpec.from_dict(data, str(path))
