"""Typed, validated configuration: YAML mappings into frozen dataclasses.

Each dataclass field declares its constraint in metadata (``param(...)``); ``build`` walks a mapping, checks
unknown keys, types and ranges, and raises ``ConfigError`` with the dotted key path, the expectation and the
bad value. No third-party schema library: the checks are few and the messages matter more than the machinery.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import reprlib
import types
import typing
from typing import Any, Callable, Mapping

from soc.errors import ConfigError

_MISSING = dataclasses.MISSING
MAX_INT = 2**53  # integers beyond this are not exact as floats, and no parameter needs them
MAX_FLOAT = 1e18  # no parameter needs more in its unit; products of a few such stay far from overflow
MIN_FLOAT = 1e-18  # nor less (but 0): reciprocals and products of a few such stay finite
_EXPONENT_FLOAT = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")  # 1e-3, 2E9, 1.5e3: text to YAML 1.1

# error messages quote the bad value, but boundedly: a 1 MiB string or a 10^5-node list stays one short line
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6
_REPR.maxlevel = 3


def show(value: Any) -> str:
    """A bounded, one-line repr of a bad value for an error message."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # e.g. an int past the str-conversion limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


PATH_CHARS = 4096  # paths are quoted whole (PATH_MAX), keys and values shortened to 200 characters


def one_line(text: Any, limit: int = 200) -> str:
    """A key or path as one line: control characters escaped, long text shortened."""
    s = str(text)
    if not s.isprintable():
        s = repr(s)[1:-1]
    return s if len(s) <= limit else s[:limit - 3] + "..."


def param(default: Any = _MISSING, *, doc: str = "", ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None,
          choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
          default_factory: Any = _MISSING) -> Any:
    """A dataclass field with a documented range; the loader enforces it."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices_of(meta: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A field's allowed values; a callable gives them late (block kinds come from the block registry)."""
    choices = meta.get("choices")
    return choices() if callable(choices) else choices


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list"
    if origin is dict:
        return "a mapping"
    return str(tp)


def _range_text(meta: Mapping[str, Any]) -> str:
    low = ("[", meta["ge"]) if meta.get("ge") is not None else ("(", meta["gt"]) if meta.get("gt") is not None else None
    high = ("]", meta["le"]) if meta.get("le") is not None else (")", meta["lt"]) if meta.get("lt") is not None else None
    if low and high:  # an interval reads better than two inequalities
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    parts = []
    for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{op} {meta[key]:g}")
    return " ".join(parts)


def _check_range(value: Any, meta: Mapping[str, Any], where: str, what: str) -> None:
    choices = choices_of(meta)
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bad = ((meta.get("ge") is not None and value < meta["ge"]) or (meta.get("gt") is not None and value <= meta["gt"])
               or (meta.get("le") is not None and value > meta["le"]) or (meta.get("lt") is not None and value >= meta["lt"]))
        if bad:
            raise ConfigError(f"{where}: expected {what} {_range_text(meta)}, got {show(value)}")


def convert(tp: Any, value: Any, where: str, meta: Mapping[str, Any] | None = None) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists to tuples, ints to floats)."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    what = _describe(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(arg, value, where, meta)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {what}, got {show(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {show(value)}")
        return build(tp, value, where)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {show(value)}")
        item_tp = args[0] if args else Any
        return tuple(convert(item_tp, v, f"{where}[{i}]", meta) for i, v in enumerate(value))
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {show(value)}")
        out = {}
        for k, v in value.items():
            if key_tp is int and isinstance(k, str):  # YAML and --set give "3" for per_layer keys
                k = _int_text(k)
            key = convert(key_tp, k, f"{where}.{one_line(k)}")
            out[key] = convert(val_tp, v, f"{where}.{one_line(k)}", meta)
        return out
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                value = int(value)
            else:
                raise ConfigError(f"{where}: expected an integer {_range_text(meta)}".rstrip()
                                  + f", got {show(value)}")
        _check_range(value, meta, where, "an integer")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{where}: expected an integer of magnitude at most 2**53, got {show(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 as text; a number field means the number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number {_range_text(meta)}".rstrip() + f", got {show(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer past 1.8e308
            raise ConfigError(f"{where}: expected a finite number, got {show(value)}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: expected a finite number, got {show(value)}")
        if abs(value) > MAX_FLOAT:
            raise ConfigError(f"{where}: expected a number of magnitude at most {MAX_FLOAT:g}, got {show(value)}")
        if 0 < abs(value) < MIN_FLOAT:  # 5e-324 GHz: its reciprocal (a clock period) overflows to infinity
            raise ConfigError(f"{where}: expected 0 or a number of magnitude at least {MIN_FLOAT:g}, "
                              f"got {show(value)}")
        _check_range(value, meta, where, "a number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {show(value)}")
        _check_range(value, meta, where, "a string")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


@functools.lru_cache(maxsize=None)
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(type hints, init fields) of a config dataclass: resolving the hints is ~1 ms a class, per build."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls) if f.init}


def build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and missing required keys are errors."""
    hints, fields = _schema(cls)
    prefix = f"{where}." if where and not where.endswith(":") else where + (" " if where else "")
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{one_line(show(key) if not isinstance(key, str) else key)}: unknown key "
                              f"(expected one of: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], f"{prefix}{name}", f.metadata)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing ({_describe(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # cross-field checks in __post_init__
        raise ConfigError(f"{where}: {exc}") from None


def _int_text(k: str) -> Any:
    """``"3"`` -> 3 for integer-keyed mappings; anything else is returned for ``convert`` to refuse."""
    t = k.strip()
    if t.lstrip("-").isdecimal() and len(t) <= 20:  # isdigit() would pass "²", which int() refuses
        return int(t)
    return k


def to_dict(obj: Any) -> Any:
    """The resolved config as plain YAML/JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) for every field, recursively: the README's parameter table."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows.extend(field_docs(tp, key + "."))
            continue
        default = f.default if f.default is not _MISSING else ("(required)" if f.default_factory is _MISSING
                                                               else to_dict(f.default_factory()))
        rng = _range_text(f.metadata) if f.metadata else ""
        choices = choices_of(f.metadata) if f.metadata else None
        doc = f.metadata.get("doc", "") if f.metadata else ""
        if choices:
            doc += f" One of: {', '.join(map(str, choices))}."
        if rng:
            doc += f" Range: {rng}."
        rows.append((key, _describe(tp), str(default), doc.strip()))
    return rows
