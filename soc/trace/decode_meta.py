"""``meta.decode`` of a decode trace (see README, trace format): prompt and generated token counts, how the
continuation was produced, and how many sequences are stacked as heads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from soc.errors import TraceError

DECODE_MODES = ("greedy", "teacher_forced", "synthetic")


def check_decode_meta(info: Any, m: Mapping[str, Any], where: str) -> dict:
    """Validate ``meta.decode`` against the rest of the metadata (see README, trace format)."""
    def fail(key: str, expected: str, got: Any) -> TraceError:
        return TraceError(f"{where}: meta.decode.{key}: expected {expected}, got {got!r}")

    if not isinstance(info, dict):
        raise TraceError(f"{where}: meta.decode: expected an object, got {type(info).__name__}")
    for key in ("prompt_tokens", "generated_tokens"):
        val = info.get(key)
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise fail(key, "an integer >= 1", val)
    if info["prompt_tokens"] + info["generated_tokens"] != m['seq_len']:
        raise fail("generated_tokens", f"prompt_tokens + generated_tokens = seq_len ({m['seq_len']})",
                   info["generated_tokens"])
    if info.get("mode") not in DECODE_MODES:
        raise fail("mode", " or ".join(repr(x) for x in DECODE_MODES), info.get("mode"))
    batch = info.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1 or m['kv_heads'] % batch:
        raise fail("batch", f"an integer >= 1 dividing kv_heads ({m['kv_heads']})", batch)
    if not m['causal']:
        raise TraceError(f"{where}: meta.causal: expected true for a decode trace, got false")
    if m['query_offset'] not in (0, info["prompt_tokens"]):
        raise TraceError(f"{where}: meta.query_offset: expected 0 (prompt queries held) or prompt_tokens "
                         f"({info['prompt_tokens']}) for a decode trace, got {m['query_offset']}")
    return info
