"""Loading SoC configs: YAML files with ``extends:``, ``--set dotted.key=value`` overrides, strict checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from soc.config.fields import build, to_dict
from soc.config.schema import SocConfig
from soc.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
MAX_EXTENDS_DEPTH = 16
PROVENANCE_TAGS = ("published", "derived", "assumed")


def package_root() -> Path:
    """The repository (or installed data) root holding configs/, workloads/ and traces/."""
    return Path(__file__).resolve().parent.parent.parent


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given, or a bare name looked up in the bundled configs/ folder."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(name_or_path):
        return path
    return package_root() / "configs" / f"{name_or_path}.yaml"


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in ``over`` replaces what ``base`` had."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: expected a config path or name, got {parent!r}")
    parent_path = Path(parent)
    if not parent_path.is_absolute():
        local = path.parent / parent_path
        parent_path = local if local.exists() or parent_path.suffix else resolve_config_path(parent)
    parent_path = parent_path.resolve()
    if parent_path in seen or len(seen) > MAX_EXTENDS_DEPTH:
        raise ConfigError(f"{path}: extends: cycle or chain deeper than {MAX_EXTENDS_DEPTH} ({parent})")
    return deep_merge(_load_tree(parent_path, seen + (parent_path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value``: the value is parsed as YAML (numbers, booleans, lists), else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text}: expected dotted.key=value, got an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):  # list items by index: interconnect.links.0.latency_ns
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {text}: {part}: expected an index in 0..{len(node) - 1}")
                part = int(part)  # type: ignore[assignment]
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {parts[depth - 1]} is not a section")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return data


def _check_provenance(cfg: SocConfig, where: str) -> None:
    flat = set(_flat_keys(to_dict(cfg)))
    for key, note in cfg.provenance.items():
        if key not in flat and not any(k.startswith(key + ".") for k in flat):
            raise ConfigError(f"{where}: provenance.{key}: no such parameter")
        if not note.split(":", 1)[0].strip() in PROVENANCE_TAGS:
            raise ConfigError(f"{where}: provenance.{key}: expected text starting with published:, derived: "
                              f"or assumed:, got {note!r}")


def _flat_keys(tree: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat_keys(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip(".")


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> SocConfig:
    cfg = build(SocConfig, data, f"{where}:")
    _check_provenance(cfg, where)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> SocConfig:
    """Load a config file (default: the paper's chip) with ``extends:`` resolved and overrides applied."""
    cfg_path = resolve_config_path(path if path is not None else "hybrid65nm")
    data = _load_tree(cfg_path, (cfg_path.resolve(),))
    # overrides may address defaults the file does not spell out (e.g. interconnect.links.0.latency_ns)
    data = apply_overrides(deep_merge(to_dict(SocConfig()), data), overrides)
    return config_from_dict(data, str(path if path is not None else cfg_path))


def config_to_dict(cfg: SocConfig) -> dict[str, Any]:
    return to_dict(cfg)
