"""Byte-level BPE tokenizer rebuilt from a GGUF file's vocabulary and merges (GPT-2 style, as SmolLM2 uses).

GGUF keeps the tokenizer as plain arrays (``tokenizer.ggml.tokens``, ``.merges``, ``.token_type``) plus a
pre-tokenizer name. For ``pre = "smollm"`` llama.cpp splits digits one by one and then applies the GPT-2
byte-level regex, which is exactly the original Hugging Face tokenizer: ``Digits(individual_digits=True)``
followed by ``ByteLevel(add_prefix_space=False)``. Control tokens (type 3, e.g. ``<|im_start|>``) are
registered as special tokens so they map to their single id. No BOS is added (``add_bos_token`` is false).
"""

from __future__ import annotations

from typing import Any

from soc.errors import ModelError
from soc.models.common import require

TOKEN_TYPE_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL
SUPPORTED_PRE = ("smollm", "default", "gpt-2", "gpt2")


def field_value(reader: Any, key: str, path: str) -> Any:
    """A GGUF metadata value (scalars unwrapped, arrays as lists), or ModelError naming the key."""
    field = reader.fields.get(key)
    if field is None:
        raise ModelError(f"{path}: GGUF metadata key {key!r} is missing")
    return field.contents()


def build_tokenizer(reader: Any, path: str) -> Any:
    """A ``tokenizers.Tokenizer`` equivalent to the GGUF's byte-level BPE."""
    tokenizers = require("tokenizers")
    model = field_value(reader, "tokenizer.ggml.model", path)
    if model != "gpt2":
        raise ModelError(f"{path}: tokenizer.ggml.model is {model!r}; expected 'gpt2' (byte-level BPE)")
    has_pre = "tokenizer.ggml.pre" in reader.fields
    pre = field_value(reader, "tokenizer.ggml.pre", path) if has_pre else "default"
    if pre not in SUPPORTED_PRE:
        raise ModelError(f"{path}: tokenizer.ggml.pre is {pre!r}; expected one of {SUPPORTED_PRE}")
    tokens: list[str] = field_value(reader, "tokenizer.ggml.tokens", path)
    types: list[int] = field_value(reader, "tokenizer.ggml.token_type", path)
    merges = [tuple(m.split(" ", 1)) for m in field_value(reader, "tokenizer.ggml.merges", path)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = tokenizers.models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    tok = tokenizers.Tokenizer(bpe)
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
            [tokenizers.pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = tokenizers.decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(types) if t == TOKEN_TYPE_CONTROL]
    tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in specials])
    return tok
