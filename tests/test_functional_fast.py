"""The faster functional pass (issue 14) against the pass it replaced, frozen in tests/legacy_functional.py:
the same masks, chunk tables, thresholds, metrics and outputs, bit for bit, on every rule and path."""

from __future__ import annotations

import legacy_functional as legacy
import numpy as np
import pytest
from test_functional import make_trace

from soc.attention import functional
from soc.attention.pruning import calibrate_thresholds, quantile_threshold
from soc.attention.spec import CimQuantSpec, LayerRule, PruningSpec
from soc.attention.table import CHUNK_DTYPE

THR = LayerRule("threshold", target_kept_fraction=0.3)
CASES = {
    "threshold-head-noisy": dict(rule=THR, noise=0.7),
    "threshold-head-noiseless": dict(rule=LayerRule("threshold", target_kept_fraction=0.25)),
    "threshold-layer": dict(rule=LayerRule("threshold", target_kept_fraction=0.4, granularity="layer"),
                            noise=0.3),
    "threshold-fixed-sinks": dict(rule=LayerRule("threshold", threshold=0.5, keep_sink_tokens=1,
                                                 keep_recent_tokens=2), noise=0.2),
    "margin": dict(rule=LayerRule("margin", margin=1.5), noise=0.4),
    "topk": dict(rule=LayerRule("topk", topk_keys=5), noise=0.4),
    "none": dict(rule=LayerRule("none")),
    "decode-offset": dict(rule=THR, noise=0.5, seq_q=6, offset=34),
    "encoder": dict(rule=THR, noise=0.5, causal=False),
    "mixed-layers": dict(rule=THR, noise=0.5,
                         per_layer=((1, LayerRule("none")), (2, LayerRule("margin", margin=0.5)))),
}


def _run(module, q, k, v, *, rule, causal=True, offset=0, noise=0.0, per_layer=(), calibration=None):
    spec = PruningSpec(rule, per_layer=per_layer, quant=CimQuantSpec(noise_sigma_lsb=noise))
    return module.run_functional(q, k, v, scale=q.shape[-1] ** -0.5, causal=causal, query_offset=offset,
                                 pruning=spec, q_tile=8, k_tile=16, seed=3, keep_output=True,
                                 keep_masks=True, calibration=calibration)


def _assert_same(new, old):
    assert new.accuracy == old.accuracy
    assert new.per_layer == old.per_layer  # thresholds, score LSBs and per-layer metrics, exactly
    for key in old.chunks:
        assert new.chunks[key].dtype == CHUNK_DTYPE
        np.testing.assert_array_equal(new.chunks[key], old.chunks[key], err_msg=key)
        np.testing.assert_array_equal(new.dense_chunks[key], old.dense_chunks[key], err_msg=f"dense {key}")
    for a, b in zip(new.masks, old.masks):
        np.testing.assert_array_equal(a, b)
    assert new.output.tobytes() == old.output.tobytes()


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_results_as_the_replaced_pass(name):
    case = dict(CASES[name])
    seq_q = case.pop("seq_q", 40)
    q, k, v = make_trace(seed=len(name), seq_q=seq_q, seq_k=40)
    _assert_same(_run(functional, q, k, v, **case), _run(legacy, q, k, v, **case))


@pytest.mark.parametrize("name", ["encoder", "threshold-layer", "margin", "none"])
def test_an_encoder_head_in_row_blocks_gives_the_whole_matrix_results(monkeypatch, name):
    """Beyond BLOCK_PAIRS pairs a non-causal head runs in blocks of rows that span every key: each row's sums
    run over the same keys in the same order, so the results stay those of the whole-matrix pass, bit for bit."""
    from soc.attention import exact

    monkeypatch.setattr(exact, "CAUSAL_BLOCK_ROWS", 16)
    monkeypatch.setattr(exact, "BLOCK_PAIRS", 1)
    case = {**CASES[name], "causal": False}
    q, k, v = make_trace(seed=5, seq_q=40, seq_k=40)
    valid = exact.valid_mask(40, 40, False)
    assert exact.row_blocks(valid) == [(0, 16, 40), (16, 32, 40), (32, 40, 40)]
    work = exact.AttentionWork(valid)
    heads = q.shape[1]
    k_h, v_h = (exact.expand_kv(x[0], heads) for x in (k, v))
    work.attend(q[0], k_h, v_h, 0.3, np.broadcast_to(valid, (heads, 40, 40)).copy())
    held = work.scratch.held_bytes()
    assert held["scores"] == held["pruned"] == heads * 16 * 40 * 4  # one block's rows of float32, not 40
    _assert_same(_run(functional, q, k, v, **case), _run(legacy, q, k, v, **case))


@pytest.mark.parametrize("rule", [THR, LayerRule("threshold", target_kept_fraction=0.4, granularity="layer"),
                                  LayerRule("margin", margin=1.0)])
def test_same_results_head_by_head(monkeypatch, rule):
    monkeypatch.setattr(functional, "MAX_LAYER_ELEMENTS", 1)
    monkeypatch.setattr(legacy, "MAX_LAYER_ELEMENTS", 1)
    q, k, v = make_trace(seed=5)
    _assert_same(_run(functional, q, k, v, rule=rule, noise=0.5), _run(legacy, q, k, v, rule=rule, noise=0.5))


def test_same_results_with_a_calibration_trace():
    q, k, v = make_trace(seed=6)
    cq, ck, _ = make_trace(seed=7, layers=4, seq_q=30, seq_k=50)
    args = dict(rule=THR, noise=0.5, calibration=(cq, ck))
    _assert_same(_run(functional, q, k, v, **args), _run(legacy, q, k, v, **args))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("frac", [0.02, 0.25, 0.75, 1.0])
def test_band_thresholds_equal_the_full_partition_on_large_layers(causal, frac):
    """Layers big enough for the sampled band (the small traces above fall back to the full partition)."""
    rng = np.random.default_rng(int(frac * 100) + causal)
    approx = rng.standard_normal((3, 300, 300)).astype(np.float32)
    approx[1] = np.round(approx[1] * 4) / 4  # heavy ties, as noiseless integer scores have
    valid = np.tril(np.ones((300, 300), bool)) if causal else np.ones((300, 300), bool)
    for granularity in ("head", "layer"):
        got = calibrate_thresholds(approx, valid, frac, granularity)
        want = legacy.calibrate_thresholds(approx, valid, frac, granularity)
        assert got.tobytes() == want.tobytes(), granularity


def test_band_threshold_misses_fall_back_to_the_exact_answer(monkeypatch):
    """A band too narrow to hold the quantile (forced here) must still give the exact threshold."""
    from soc.attention import pruning

    monkeypatch.setattr(pruning, "BAND_SIGMAS", -1.0)  # an empty band: every call misses
    approx = np.random.default_rng(0).standard_normal((2, 200, 200)).astype(np.float32)
    valid = np.tril(np.ones((200, 200), bool))
    got = calibrate_thresholds(approx, valid, 0.3, "head")
    want = quantile_threshold(approx[:, valid], 0.3)
    assert got.tobytes() == want.tobytes()


def test_functional_pass_and_trace_synth_advance_one_step_per_layer(tmp_path):
    from soc import progress
    from soc.trace.synth import write_synth_trace

    seen: dict[str, list] = {}

    class Recording(progress.Task):
        def __init__(self, name: str, total) -> None:
            self.name = name
            seen[name] = [total, 0]

        def advance(self, n: float = 1) -> None:
            seen[self.name][1] += n

    token = progress._factory.set(lambda name, total, unit: Recording(name, total))
    try:
        q, k, v = make_trace(seed=1, layers=3)
        _run(functional, q, k, v, rule=THR)
        write_synth_trace(tmp_path / "t", "minilm-l6", seq_len=16, layers=2)
    finally:
        progress._factory.reset(token)
    assert seen == {"functional pass": [3, 3], "trace synth minilm-l6": [2, 2]}


@pytest.mark.parametrize("placement", ["stream", "reuse", "resident"])
def test_dense_counterfactual_per_head_scales_to_the_whole_table(causal_trace, paper_cfg, placement):
    """The report's dense traffic can come from one KV group's table times the (layer, KV head) count: the same
    bytes, exactly, as from the whole table (what FunctionalResult.dense_group / dense_repeats offer)."""
    import dataclasses

    from soc.dataflow import demand, traffic_totals
    from soc.simulate import dense_config, shape_of, simulate

    cfg = dataclasses.replace(paper_cfg, dataflow=dataclasses.replace(paper_cfg.dataflow, kv_placement=placement))
    res = simulate(cfg, causal_trace, model_accuracy=False)
    func, shape, place = res.functional, shape_of(causal_trace), res.stats.placement
    dense_cfg = dense_config(cfg)
    whole = traffic_totals(demand(func.dense_chunks, dense_cfg, shape, place), place)
    group_shape = dataclasses.replace(shape, layers=1, heads=func.group, kv_heads=1)
    one = traffic_totals(demand(func.dense_group, dense_cfg, group_shape, place), place)
    assert whole == {key: val * func.dense_repeats for key, val in one.items()}
    assert res.report["traffic"]["dense"] == whole
    assert func.dense_group["pairs_valid"].sum() * func.dense_repeats == func.dense_chunks["pairs_valid"].sum()


@pytest.mark.parametrize("offset", [0, 90])
def test_causal_row_blocks_give_the_whole_matrix_attention(offset):
    """A causal head longer than one row block (soc.attention.exact.CAUSAL_BLOCK_ROWS) against the plain
    softmax over the whole matrix: the blocks skip only pairs no row may see. Row sums then run over a block's
    keys, not the whole row (numpy's pairwise summation groups them differently): equal to float32 rounding."""
    from soc.attention.exact import AttentionWork, attention, row_blocks, valid_mask

    rng = np.random.default_rng(offset)
    seq_q, seq_k = 600, 600 + offset
    q, k, v = (rng.standard_normal((2, n, 16)).astype(np.float32) for n in (seq_q, seq_k, seq_k))
    valid = valid_mask(seq_q, seq_k, True, offset)
    assert len(row_blocks(valid)) == 3
    keep = (rng.random((2, seq_q, seq_k)) < 0.3) & valid
    keep[:, :, 0] = True
    work = AttentionWork(valid)
    got = work.attend(q, k, v, 0.25, keep)
    # the softmax buffers hold one step: one block's rows (256, up to its last key) for as many heads as fit
    assert work.scratch.held_bytes()["pruned"] <= 2 * 256 * seq_k * 4
    out_exact, probs = attention(q, k, v, 0.25, True, offset)
    out_pruned, _ = attention(q, k, v, 0.25, True, offset, keep=keep)
    # a row's mass on its kept keys: float64 sums of its block's probabilities (float32 rounding of each)
    np.testing.assert_allclose(got.mass_kept, np.einsum("hqk,hqk->hq", probs, keep, dtype=np.float64),
                               rtol=1e-6, atol=1e-9)
    # an output is a float32 sum of up to 690 weighted values of V ~ N(0, 1): its rounding is ~1e-6 absolute
    # (and a multithreaded BLAS splits the sums otherwise than one thread)
    np.testing.assert_allclose(got.out_exact, out_exact, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got.out_pruned, out_pruned, rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(got.exact_arg, np.where(valid, probs, -1).argmax(axis=-1))


def test_keys_no_row_may_see_read_zero_probability():
    """A causal trace whose last keys are past every query (query_offset + seq_q < seq_k): one row block that
    stops before the last key; the buffer's stale contents there must not leak into the probabilities."""
    from soc.attention.exact import AttentionWork, attention, row_blocks, valid_mask

    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((2, n, 8)).astype(np.float32) for n in (5, 20, 20))
    valid = valid_mask(5, 20, True, 3)
    assert row_blocks(valid) == [(0, 5, 8)]
    keep = valid & (rng.random((2, 5, 20)) < 0.5)
    keep[:, :, 0] = True
    work = AttentionWork(valid)
    for role in ("scores", "pruned"):  # stale buffer contents where the softmax works
        work.scratch.get(role, (2, 5, 20), np.float32)[:] = np.nan
    got = work.attend(q, k, v, 0.5, keep)
    out_exact, probs = attention(q, k, v, 0.5, True, 3)
    out_pruned, _ = attention(q, k, v, 0.5, True, 3, keep=keep)
    # the block's 8 keys against the whole row's 20 (12 of them zero): the same sums but for float64 grouping
    np.testing.assert_allclose(got.mass_kept, np.einsum("hqk,hqk->hq", probs, keep, dtype=np.float64),
                               rtol=1e-12, atol=0)
    np.testing.assert_array_equal(got.out_exact, out_exact)
    np.testing.assert_array_equal(got.out_pruned, out_pruned)


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/status").exists(), reason="reads RssFile from /proc (Linux)")
def test_a_done_layer_of_a_mapped_trace_leaves_the_rss(tmp_path):
    """A memory-mapped trace array: after release_layer, the layer's pages no longer count in RssFile, the values
    read again are the same, and another layer's pages are kept."""
    from soc.attention.functional import release_layer

    def rss_file_kb() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1])
        raise AssertionError("no RssFile line")

    data = np.random.default_rng(0).standard_normal((4, 2, 1024, 1024)).astype(np.float16)  # 4 MiB a layer
    np.save(tmp_path / "q.npy", data)
    q = np.load(tmp_path / "q.npy", mmap_mode="r")
    total = [float(np.asarray(q[layer], np.float32).sum()) for layer in range(4)]  # every page touched
    before = rss_file_kb()
    release_layer(q, 1)
    release_layer(q, 2)
    after = rss_file_kb()
    assert before - after >= 2 * 4096 * 0.9  # two layers of 4 MiB (in kB), page-rounded
    assert [float(np.asarray(q[layer], np.float32).sum()) for layer in range(4)] == total
    release_layer(np.zeros((2, 3)), 0)  # not mapped: nothing to do
