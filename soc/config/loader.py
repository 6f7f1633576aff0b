"""Loading SoC configs: YAML files with ``extends:``, ``--set dotted.key=value`` overrides, strict checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from soc.config.fields import PATH_CHARS, build, one_line, show, to_dict
from soc.config.schema import SocConfig
from soc.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
MAX_EXTENDS_DEPTH = 16
MAX_YAML_NODES = 20_000  # values in one file, counting every alias expansion (the paper's chip: 259)
MAX_YAML_DEPTH = 64  # nesting of mappings and lists (a config needs 5)
PROVENANCE_TAGS = ("published", "derived", "assumed")


class YamlLimitError(yaml.YAMLError):
    """A YAML document too large once aliases are expanded, too deeply nested, or recursive."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds checked while the node graph is composed, before any Python object
    is built: an alias counts as many nodes as the subtree it names (a "billion laughs" document of a few
    hundred bytes is refused once MAX_YAML_NODES are counted, in microseconds, instead of expanding 10^9
    values), a recursive alias is refused, and nesting is limited (the composer recurses per level, so 10^5
    '[' would otherwise end in Python's RecursionError)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes in its subtree, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:  # the anchor's node is still being composed: it contains itself
                    raise YamlLimitError(f"recursive alias *{event.anchor}", event.start_mark)
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise YamlLimitError(f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        before = self._nodes
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, mark)
        self._sizes[id(node)] = self._nodes - before
        return node

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_YAML_NODES:
            raise YamlLimitError(f"more than {MAX_YAML_NODES} values once aliases are expanded "
                                 "(an alias bomb?)", mark)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` within the bounds of ``BoundedLoader``. Raises ``yaml.YAMLError`` for bad syntax
    or a bound, and whatever PyYAML's constructors raise for a scalar its tag cannot hold (ValueError for a
    date 2001-13-45 or an int past 4300 digits, AttributeError for an empty !!timestamp)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
    where = one_line(path, PATH_CHARS)
    try:
        if not path.exists():
            raise ConfigError(f"{where}: no such config file")
        if path.is_dir():
            raise ConfigError(f"{where}: is a directory, expected a YAML file")
        with open(path, "rb") as fh:  # bounded read: /dev/zero or a pipe cannot exhaust memory
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError) as exc:  # permission, name too long, an embedded NUL byte
        raise ConfigError(f"{where}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes; not a config file")
    try:
        data = parse_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}:{line}: {one_line(problem)}") from None
    except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise ValueError (2001-13-45),
        # AttributeError (an empty !!timestamp), TypeError...: whatever a tagged scalar does, it is a bad value
        raise ConfigError(f"{where}: a value cannot be read ({type(exc).__name__}: "
                          f"{one_line(exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
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
    where = one_line(path, PATH_CHARS)
    if not isinstance(parent, str) or not parent.strip() or "\0" in parent:
        raise ConfigError(f"{where}: extends: expected a config path or name, got {show(parent)}")
    try:
        parent_path = Path(parent)
        if not parent_path.is_absolute():
            local = path.parent / parent_path
            parent_path = local if local.exists() or parent_path.suffix else resolve_config_path(parent)
        parent_path = parent_path.resolve()
    except (OSError, ValueError) as exc:  # e.g. a name longer than the file system allows
        raise ConfigError(f"{where}: extends: cannot resolve {show(parent)} "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    if parent_path in seen or len(seen) > MAX_EXTENDS_DEPTH:
        raise ConfigError(f"{where}: extends: cycle or chain deeper than {MAX_EXTENDS_DEPTH} "
                          f"({one_line(parent)})")
    return deep_merge(_load_tree(parent_path, seen + (parent_path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value``: the value is parsed as YAML (numbers, booleans, lists), else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {one_line(text)}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {one_line(text)}: expected dotted.key=value, got an empty key part")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except Exception:  # noqa: BLE001 - not YAML, a bound, or a tag PyYAML cannot build: the text itself
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
                # isdecimal, not isdigit: int() refuses "²"; the length bound keeps int() cheap
                if not (part.isdecimal() and len(part) < 10) or int(part) >= len(node):
                    raise ConfigError(f"--set {one_line(text)}: {one_line(part)}: expected an index in "
                                      f"0..{len(node) - 1}")
                part = int(part)  # type: ignore[assignment]
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {one_line(text)}: {one_line(parts[depth - 1])} is not a section")
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
            raise ConfigError(f"{where}: provenance.{one_line(key)}: no such parameter")
        if not note.split(":", 1)[0].strip() in PROVENANCE_TAGS:
            raise ConfigError(f"{where}: provenance.{one_line(key)}: expected text starting with published:, "
                              f"derived: or assumed:, got {show(note)}")


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
    try:
        cfg_path = resolve_config_path(path if path is not None else "hybrid65nm")
        first = cfg_path.resolve()
    except (OSError, ValueError) as exc:  # a name longer than the file system allows, a NUL byte
        raise ConfigError(f"{one_line(path, PATH_CHARS)}: cannot read "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    data = _load_tree(cfg_path, (first,))
    # overrides may address defaults the file does not spell out (e.g. interconnect.links.0.latency_ns)
    data = apply_overrides(deep_merge(to_dict(SocConfig()), data), overrides)
    return config_from_dict(data, one_line(path if path is not None else cfg_path, PATH_CHARS))


def config_to_dict(cfg: SocConfig) -> dict[str, Any]:
    return to_dict(cfg)
