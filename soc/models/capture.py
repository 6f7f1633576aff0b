"""Real workload traces from pretrained models, and the task-level price of a pruning rule.

``capture`` tokenizes a text, runs a real model and returns, per layer, the exact q, k, v that its attention
consumes (post-RoPE for SmolLM2) as float16 with trace-format-v1 metadata, including the token ids so the
model can be re-run from the trace alone. ``evaluate_pruning`` does that re-run twice, dense and with the
simulator's keep masks applied inside every layer (so pruning in layer i changes what layer i+1 sees, as on
the chip), and reports the model's own metric: sentence-embedding cosine for MiniLM, perplexity for SmolLM2.
"""

from __future__ import annotations

import functools
import hashlib
import numbers
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from soc.errors import ModelError
from soc.models import minilm, smollm2
from soc.models.common import ForwardResult, KeepFn

#: model name -> module with ``load()``, ``available()``, ``DIST``.
MODELS: dict[str, ModuleType] = {minilm.NAME: minilm, smollm2.NAME: smollm2}
FORMAT = "soc.trace/1"


def _module(model: str, where: str = "model") -> ModuleType:
    if model not in MODELS:
        raise ModelError(f"{where}: unknown model {model!r}; expected one of {sorted(MODELS)}")
    return MODELS[model]


def model_available(model: str) -> bool:
    """True when the wheels and the [models] extra needed by ``model`` are installed."""
    return bool(_module(model).available())


def load_model(model: str) -> Any:
    """The loaded model object (cached per process): ``minilm.MiniLM`` or ``smollm2.SmolLM2``."""
    return _module(model).load()


def _provenance(m: Any) -> str:
    p = m.provenance()
    return f"{p['package']} {p['version']} ({p['licence']}; weights {p['weights']})"


def capture(
    model: str,
    text: str,
    *,
    max_tokens: int | None = None,
    source_name: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Run ``model`` on ``text``; return float16 q (L,H,S,D), k and v (L,KV,S,D) and trace-v1 metadata."""
    mod = _module(model)
    if not isinstance(text, str) or not text.strip():
        where = source_name or "text"
        raise ModelError(f"{where}: the text is empty; expected some English text to tokenize")
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens < 1
                                   or not isinstance(max_tokens, numbers.Integral)):
        raise ModelError(f"max_tokens: expected a positive integer, got {max_tokens!r}")
    m = mod.load()
    ids = m.tokenize(text)
    where = source_name or "text"
    if max_tokens is not None:
        if max_tokens > m.max_tokens:
            raise ModelError(f"max_tokens={max_tokens} exceeds {model}'s limit of {m.max_tokens} tokens")
        ids = m.truncate(ids, int(max_tokens))
    elif len(ids) > m.max_tokens:
        raise ModelError(f"{where}: {len(ids)} tokens is more than {model}'s limit of {m.max_tokens}; "
                         f"pass --max-tokens N (N <= {m.max_tokens}) to truncate")
    result = m.forward(ids, capture=True, **({"want_logits": False} if m.causal else {}))
    meta = {
        "format": FORMAT,
        "model": model,
        "source": "capture",
        "causal": bool(m.causal),
        "layers": m.layers,
        "heads": m.heads,
        "kv_heads": m.kv_heads,
        "seq_len": len(ids),
        "head_dim": m.head_dim,
        "scale": float(m.scale),
        "query_offset": 0,
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "tokens": len(ids),
        "provenance": _provenance(m),
        "token_ids": [int(t) for t in ids],
    }
    if source_name is not None:
        meta["text"] = str(source_name)
    return result.q, result.k, result.v, meta


def _token_ids(meta: Mapping[str, Any], m: Any) -> tuple[int, ...]:
    ids = meta.get("token_ids")
    if not isinstance(ids, (list, tuple)) or not ids or not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in ids):
        raise ModelError(f"meta.token_ids: expected a non-empty list of integers (a capture trace), got "
                         f"{type(ids).__name__ if not isinstance(ids, (list, tuple)) else 'a bad list'}")
    seq_len = meta.get("seq_len")
    if seq_len is not None and seq_len != len(ids):
        raise ModelError(f"meta.token_ids: holds {len(ids)} ids but meta.seq_len is {seq_len}")
    if len(ids) > m.max_tokens:
        raise ModelError(f"meta.token_ids: {len(ids)} tokens is more than {m.name}'s limit of {m.max_tokens}")
    return tuple(int(t) for t in ids)


@functools.lru_cache(maxsize=1)
def _dense(model: str, ids: tuple[int, ...]) -> ForwardResult:
    # A sweep evaluates many rules on one trace: the dense reference is computed once, and only its task
    # output is kept (SmolLM2 logits at 2048 tokens are 400 MB; hidden states are not needed).
    r = MODELS[model].load().forward(list(ids))
    return ForwardResult(output=r.output, hidden_states=[], stats=r.stats)


def evaluate_pruning(meta: Mapping[str, Any], keep_fn: KeepFn) -> dict:
    """Re-run the captured text dense and with ``keep_fn``'s masks; return the model's task metric.

    MiniLM: ``{"metric": "embedding_cosine", "embedding_cosine"}``; SmolLM2: ``{"metric": "perplexity",
    "perplexity_dense", "perplexity_pruned", "perplexity_change", "next_token_agreement"}``; both with
    ``kept_fraction`` (kept / causally allowed (query, key) pairs over all layers and heads, from the masks
    actually applied) and ``per_layer_kept_fraction``.
    """
    if hasattr(meta, "to_dict"):
        meta = meta.to_dict()
    if not isinstance(meta, Mapping):
        raise ModelError(f"meta: expected a trace metadata mapping, got {type(meta).__name__}")
    name = meta.get("model")
    mod = _module(name if isinstance(name, str) else repr(name), "meta.model")
    if not callable(keep_fn):
        raise ModelError(f"keep_fn: expected a callable (layer, q, k) -> mask or None, got {keep_fn!r}")
    m = mod.load()
    ids = _token_ids(meta, m)
    dense = _dense(m.name, ids)
    pruned = m.forward(list(ids), keep_fn)
    out = m.task_metrics(dense, pruned, list(ids))
    out["kept_fraction"] = pruned.stats.kept_fraction
    out["per_layer_kept_fraction"] = list(pruned.stats.per_layer_kept_fraction)
    out["model"] = m.name
    out["tokens"] = len(ids)
    return out


def capture_decode(model: str, text: str, *, prompt_tokens: int | None = None, generate: int,
                   teacher_forced: bool = False, source_name: str | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """A decode trace: the model decodes with a KV cache after a prompt of the text's first ``prompt_tokens``
    tokens (default: all of them), greedily or fed the text's next ``generate`` tokens (``teacher_forced``).
    q, k, v cover every position (the prompt's queries too: the prefill is replayed); ``meta.decode`` says
    where the prompt ends (see README, trace format)."""
    mod = _module(model)
    m = mod.load()
    where = source_name or "text"
    if not hasattr(m, "generate"):
        raise ModelError(f"model: {model} is an encoder; --mode decode needs a decoder (smollm2-135m)")
    if not isinstance(text, str) or not text.strip():
        raise ModelError(f"{where}: the text is empty; expected some English text to tokenize")
    for name, val in (("generate", generate), ("prompt_tokens", prompt_tokens)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, numbers.Integral) or val < 1):
            raise ModelError(f"{name}: expected a positive integer, got {val!r}")
    ids = m.tokenize(text)
    prompt = len(ids) if prompt_tokens is None else int(prompt_tokens)
    need = prompt + (generate if teacher_forced else 0)
    if need > len(ids):
        raise ModelError(f"{where}: {len(ids)} tokens; expected at least {need} (prompt {prompt}"
                         f"{f' + {generate} forced' if teacher_forced else ''})")
    if prompt + generate > m.max_tokens:
        raise ModelError(f"prompt + generate = {prompt + generate} exceeds {model}'s limit of {m.max_tokens}")
    forced = ids[prompt:prompt + generate] if teacher_forced else None
    seq_ids, next_id, buffers = m.generate(ids[:prompt], int(generate), forced)
    meta = {
        "format": FORMAT, "model": model, "source": "capture", "causal": True, "layers": m.layers,
        "heads": m.heads, "kv_heads": m.kv_heads, "seq_len": len(seq_ids), "head_dim": m.head_dim,
        "scale": float(m.scale), "query_offset": 0,
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "tokens": len(seq_ids),
        "provenance": _provenance(m), "token_ids": [int(t) for t in seq_ids],
        "decode": {"prompt_tokens": prompt, "generated_tokens": int(generate),
                   "mode": "teacher_forced" if teacher_forced else "greedy", "batch": 1,
                   "next_token_id": int(next_id), "continuation": m.decode(seq_ids[prompt:])},
    }
    if source_name is not None:
        meta["text"] = str(source_name)
    return buffers.q, buffers.k, buffers.v, meta
