"""Trace metadata, format v1: what a trace holds and how to read it.

The metadata names the model, whether the trace is a real capture or synthetic, the attention shape
(layers, query heads, key/value heads, sequence length, head dimension), the softmax scale, whether attention
is causal, and for decode traces the position of the first query (``query_offset``). Captures also record the
sha256 and token count of the source text. Unknown keys are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soc.config.fields import PATH_CHARS, one_line, show
from soc.errors import TraceError

FORMAT = "soc.trace/1"
SOURCES = ("capture", "synthetic")
_INT_KEYS = {"layers": 1, "heads": 1, "kv_heads": 1, "seq_len": 1, "head_dim": 1}
_OPTIONAL_STR = ("provenance", "text")
_KNOWN = {"format", "model", "source", "causal", "scale", "query_offset", "text_sha256", "tokens",
          *_INT_KEYS, *_OPTIONAL_STR}


MAX_DIM = 2**53  # no dimension or count is larger; keeps shapes (and messages) in int64 range


def bad(where: str, key: str, expected: str, got: Any) -> TraceError:
    """The error for one bad field; the value is quoted boundedly (a 10^5-element list stays short)."""
    return TraceError(f"{one_line(where, PATH_CHARS)}: {key}: expected {expected}, got {show(got)}")


def _as_int(d: Mapping[str, Any], key: str, where: str, lo: int) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < lo:
        raise bad(where, f"meta.{key}", f"an integer >= {lo}", value)
    if int(value) > MAX_DIM:
        raise bad(where, f"meta.{key}", "an integer <= 2**53", value)
    return int(value)


def _normalize_meta(d: Any, where: str) -> dict[str, Any]:
    """Validate a metadata mapping; return TraceMeta constructor arguments (unknown keys go to ``extra``)."""
    if not isinstance(d, Mapping):
        raise bad(where, "meta", "a JSON object", type(d).__name__)
    missing = [k for k in ("format", "model", "source", "causal", *_INT_KEYS) if k not in d]
    if missing:
        raise TraceError(f"{where}: meta: missing required key(s) {', '.join(missing)}")
    if d["format"] != FORMAT:
        raise bad(where, "meta.format", repr(FORMAT), d["format"])
    out: dict[str, Any] = {"format": FORMAT}
    if not isinstance(d["model"], str) or not d["model"]:
        raise bad(where, "meta.model", "a non-empty string", d["model"])
    out["model"] = d["model"]
    if d["source"] not in SOURCES:
        raise bad(where, "meta.source", "'capture' or 'synthetic'", d["source"])
    out["source"] = d["source"]
    if not isinstance(d["causal"], (bool, np.bool_)):
        raise bad(where, "meta.causal", "true or false", d["causal"])
    out["causal"] = bool(d["causal"])
    for key, lo in _INT_KEYS.items():
        out[key] = _as_int(d, key, where, lo)
    if out["heads"] % out["kv_heads"]:
        raise TraceError(f"{where}: meta.kv_heads: expected a divisor of heads={out['heads']}, "
                         f"got {out['kv_heads']}")
    scale = d.get("scale")
    if scale is None:
        scale = 1.0 / math.sqrt(out["head_dim"])
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < float(scale) < math.inf:
        raise bad(where, "meta.scale", "a positive finite number", scale)
    out["scale"] = float(scale)
    out["query_offset"] = _as_int({"query_offset": d.get("query_offset", 0)}, "query_offset", where, 0)
    if out["query_offset"] >= out["seq_len"]:
        raise bad(where, "meta.query_offset", f"< seq_len={out['seq_len']} (at least one query)",
                   out["query_offset"])
    sha = d.get("text_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                and all(c in "0123456789abcdef" for c in sha)):
        raise bad(where, "meta.text_sha256", "64 lowercase hex digits", sha)
    out["text_sha256"] = sha
    out["tokens"] = None if d.get("tokens") is None else _as_int(d, "tokens", where, 1)
    if out["source"] == "capture" and (sha is None or out["tokens"] is None):
        raise TraceError(f"{where}: meta: a capture needs 'text_sha256' and 'tokens'")
    for key in _OPTIONAL_STR:
        if d.get(key) is not None and not isinstance(d[key], str):
            raise bad(where, f"meta.{key}", "a string", d[key])
        out[key] = d.get(key)
    extra = {k: v for k, v in d.items() if k not in _KNOWN}
    if "decode" in extra:  # a decode trace (soc.decode): its prompt/step counts must match the shape
        from soc.trace.decode_meta import check_decode_meta
        check_decode_meta(extra["decode"], out, where)
    try:
        out["extra"] = json.loads(json.dumps(extra, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise bad(where, "meta (extra keys)", "JSON-serialisable values", str(exc)) from None
    return out


@dataclass(frozen=True)
class TraceMeta:
    """Trace metadata (format v1). Constructing one validates every field; see module docstring."""

    model: str
    source: str
    causal: bool
    layers: int
    heads: int
    kv_heads: int
    seq_len: int
    head_dim: int
    scale: float | None = None  # None -> 1/sqrt(head_dim)
    query_offset: int = 0  # decode traces: queries are positions query_offset .. seq_len-1
    text_sha256: str | None = None
    tokens: int | None = None
    provenance: str | None = None
    text: str | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.extra, Mapping) or _KNOWN & set(self.extra):
            raise bad("TraceMeta", "extra", "a mapping of keys other than the v1 keys", self.extra)
        for key, value in _normalize_meta(self.to_dict(), "TraceMeta").items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "<meta>") -> TraceMeta:
        return cls(**_normalize_meta(d, where))

    @property
    def seq_q(self) -> int:
        return self.seq_len - self.query_offset

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.format, "model": self.model, "source": self.source,
                             "causal": self.causal, "layers": self.layers, "heads": self.heads,
                             "kv_heads": self.kv_heads, "seq_len": self.seq_len, "head_dim": self.head_dim,
                             "scale": self.scale, "query_offset": self.query_offset}
        for key in ("text_sha256", "tokens", *_OPTIONAL_STR):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        d.update(copy.deepcopy(dict(self.extra)))  # a copy: callers may mutate the result
        return d

    def expected_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        kv = (self.layers, self.kv_heads, self.seq_len, self.head_dim)
        return {"q": (self.layers, self.heads, self.seq_q, self.head_dim), "k": kv, "v": kv}


# the pretrained models a capture can name: their attention shape and vocabulary, so that a capture's metadata
# is checked when the trace is loaded, not when the model is re-run after the whole simulation
MODEL_SHAPES: dict[str, dict[str, int]] = {
    "minilm-l6": {"layers": 6, "heads": 12, "kv_heads": 12, "head_dim": 32, "vocab": 30522},
    "smollm2-135m": {"layers": 30, "heads": 9, "kv_heads": 3, "head_dim": 64, "vocab": 49152},
}


def check_model_meta(meta: TraceMeta, where: str) -> None:
    """A capture of a known model: its shape must be the model's (layers at most the model's) and its
    ``token_ids`` (if any) one integer id per position, in the model's vocabulary."""
    shape = MODEL_SHAPES.get(meta.model)
    if meta.source != "capture" or shape is None:
        return
    for key in ("heads", "kv_heads", "head_dim"):
        if getattr(meta, key) != shape[key]:
            raise bad(where, f"meta.{key}", f"{shape[key]} for a capture of {meta.model}", getattr(meta, key))
    if meta.layers > shape["layers"]:
        raise bad(where, "meta.layers", f"at most {shape['layers']} for a capture of {meta.model}", meta.layers)
    ids = meta.extra.get("token_ids")
    if ids is None:
        return
    if not isinstance(ids, list) or len(ids) != meta.seq_len:
        raise bad(where, "meta.token_ids", f"a list of seq_len={meta.seq_len} token ids",
                  f"{type(ids).__name__} of length {len(ids) if isinstance(ids, list) else '-'}")
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < shape["vocab"]:
            raise bad(where, f"meta.token_ids[{i}]", f"an integer id in [0, {shape['vocab']}) "
                      f"({meta.model}'s vocabulary)", t)
