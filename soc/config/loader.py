"""Loading SoC configs: YAML files with ``extends:``, ``--set dotted.key=value`` overrides, strict checks."""

from __future__ import annotations

import copy
import re
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
            what = ("once aliases are expanded (an alias bomb?)" if self.anchors
                    else "(a config holds a few hundred)")
            raise YamlLimitError(f"more than {MAX_YAML_NODES} values {what}", mark)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # a key written twice is a typo or a merge mistake: PyYAML would keep the last silently
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the constructor below refuses it
                continue
            if dup:
                raise YamlLimitError(f"key {one_line(key)!r} appears twice in one mapping", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


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


def calibration_trace_path(name_or_path: str) -> Path:
    """A path as given, or a bare name (``smollm2-135m-river``) looked up in the bundled traces/ folder."""
    path = Path(name_or_path)
    if path.exists() or path.suffix == ".npz" or "/" in str(name_or_path):
        return path
    return package_root() / "traces" / f"{name_or_path}.npz"


def resolve_bundled(text: str | Path, folder: str, suffixes: tuple[str, ...]) -> Path:
    """A path as given if it exists; else the same relative path under the package root (configs/x.yaml from
    any working directory); else a bare name in the bundled ``folder`` with one of ``suffixes``. Returns the
    path as given when nothing matches, for the caller's "no such file" message."""
    path = Path(text)
    try:
        if path.exists() or path.is_symlink() or path.is_absolute():
            return path
        root = package_root()
        if (root / path).exists():
            return root / path
        if len(path.parts) == 1:
            for suffix in suffixes:
                candidate = root / folder / f"{text}{suffix}"
                if candidate.exists():
                    return candidate
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: the caller says so
        pass
    return path


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in (package_root() / "configs").glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given, or a bundled config: configs/NAME.yaml by name, or a relative path that exists under
    the package root (so `configs/hybrid65nm.yaml` works from any directory)."""
    return resolve_bundled(name_or_path, "configs", (".yaml", ".yml"))


_PARSED: dict[tuple[str, int, int, int], dict[str, Any]] = {}  # (path, inode, size, mtime) -> parsed mapping


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file, read boundedly. Parsed files are remembered by inode,
    size and modification time: PyYAML's pure-Python parser takes ~25 ms for the paper's chip, and a sweep
    loads the base once per factor value."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    except (OSError, ValueError):
        key = None
    if key is not None and key in _PARSED:
        return copy.deepcopy(_PARSED[key])
    data = _read_yaml(path)
    if key is not None and path.is_file():
        if len(_PARSED) > 64:
            _PARSED.clear()
        _PARSED[key] = copy.deepcopy(data)
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    where = one_line(path, PATH_CHARS)
    try:
        if not path.exists():
            hint = "" if path.suffix or "/" in str(path) else f" (bundled: {', '.join(bundled_configs())})"
            raise ConfigError(f"{where}: no such config file{hint}")
        if path.is_dir():
            raise ConfigError(f"{where}: is a directory, expected a YAML file")
        if not path.is_file():  # a FIFO would block the read forever, a device never ends
            raise ConfigError(f"{where}: not a regular file, expected a YAML file")
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


def _load_tree(path: Path, seen: tuple[Path, ...], files: list[tuple[Path, dict[str, Any]]] | None = None
               ) -> dict[str, Any]:
    """The merged mapping of ``path`` and its ``extends:`` ancestors; ``files`` collects (file, own data),
    root ancestor first, so that an error can be blamed on the file that wrote the key."""
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        if files is not None:
            files.append((path, data))
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
    if not parent_path.exists():
        raise ConfigError(f"{where}: extends: no such config {one_line(parent, PATH_CHARS)}")
    merged = deep_merge(_load_tree(parent_path, seen + (parent_path,), files), data)
    if files is not None:
        files.append((path, data))
    return merged


def config_chain(path: str | Path | None) -> list[Path]:
    """The config file and every file it extends, resolved (the config itself first)."""
    cfg_path = resolve_config_path(path if path is not None else "hybrid65nm")
    files: list[tuple[Path, dict[str, Any]]] = []
    _load_tree(cfg_path, (cfg_path.resolve(),), files)
    return [p.resolve() for p, _ in reversed(files)]


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


def _key_of(message: str, where: str) -> list[str] | None:
    """The dotted key path an error from ``build`` names (``WHERE: a.b[2].c: ...`` -> [a, b, c])."""
    prefix = f"{where}: "
    if not message.startswith(prefix):
        return None
    key = message[len(prefix):].split(": ", 1)[0]
    return [re.sub(r"\[\d+\]$", "", part) for part in key.split(".")] if key else None


def _defines(data: Any, parts: list[str]) -> bool:
    node = data
    for part in parts:
        if isinstance(node, list) and part.isdecimal() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> SocConfig:
    """Load a config file (default: the paper's chip) with ``extends:`` resolved and overrides applied.

    An error names what wrote the bad value: the file (the child or the parent that holds the key) or the
    ``--set`` override."""
    overrides = list(overrides)
    try:
        cfg_path = resolve_config_path(path if path is not None else "hybrid65nm")
        first = cfg_path.resolve()
    except (OSError, ValueError) as exc:  # a name longer than the file system allows, a NUL byte
        raise ConfigError(f"{one_line(path, PATH_CHARS)}: cannot read "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    files: list[tuple[Path, dict[str, Any]]] = []
    data = _load_tree(cfg_path, (first,), files)
    where = one_line(path if path is not None else cfg_path, PATH_CHARS)
    full = deep_merge(to_dict(SocConfig()), data)
    if overrides:
        # overrides may address defaults the file does not spell out (e.g. interconnect.links.0.latency_ns)
        try:
            return config_from_dict(apply_overrides(full, overrides), where)
        except ConfigError:
            pass  # who is to blame: the file, or which override? (only on failure: each build is ~5 ms)
    try:
        cfg = config_from_dict(full, where)
    except ConfigError as exc:
        raise _blame_file(exc, where, files) from None
    for i, text in enumerate(overrides):
        try:
            config_from_dict(apply_overrides(full, overrides[:i + 1]), "--set")
        except ConfigError as exc:
            msg = str(exc)
            rest = msg[len("--set: "):] if msg.startswith("--set: ") else msg
            if rest.startswith("--set "):
                raise
            raise ConfigError(f"--set {one_line(text.split('=', 1)[0].strip())}: {_drop_key(rest, text)}") from None
    return cfg


def _drop_key(rest: str, text: str) -> str:
    """``pruning.rule: expected ...`` -> ``expected ...`` when the key is the override's own."""
    key = text.split("=", 1)[0].strip()
    return rest[len(key) + 2:] if rest.startswith(key + ": ") else rest


def _blame_file(exc: ConfigError, where: str, files: list[tuple[Path, dict[str, Any]]]) -> ConfigError:
    """Re-address an error found in the merged config to the last file of the chain that wrote the key."""
    parts = _key_of(str(exc), where)
    if parts is None or len(files) < 2:
        return exc
    for depth in range(len(parts), 0, -1):  # the longest prefix of the key some file wrote
        owners = [p for p, d in files if _defines(d, parts[:depth])]
        if owners:
            owner = one_line(owners[-1], PATH_CHARS)
            if owner == where or owners[-1] == files[-1][0]:
                return exc
            return ConfigError(f"{owner}{str(exc)[len(where):]} (in a config that {where} extends)")
    return exc


def config_to_dict(cfg: SocConfig) -> dict[str, Any]:
    return to_dict(cfg)
