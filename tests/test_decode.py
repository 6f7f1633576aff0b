"""Step-by-step decode: per-token DRAM bytes against independent counts, total work against the prefill, GQA,
batch, trace metadata and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from soc.attention.functional import run_functional
from soc.config import load_config
from soc.decode import decode_layout, run_decode, synth_decode, total_pairs, window
from soc.errors import TraceError
from soc.simulate import pruning_spec, shape_of
from soc.trace import TraceMeta, load_trace, save_trace

P, G, LAYERS = 100, 3, 2  # smollm2-135m shape: 9 query heads share 3 kv heads (GQA), head_dim 64


@pytest.fixture(scope="module")
def trace():
    return synth_decode("smollm2-135m", prompt=P, generate=G, layers=LAYERS, prefill=False, seed=3)


def cfg_of(*sets: str):
    return load_config("configs/hybrid65nm.yaml", list(sets))


def test_dense_dram_bytes_per_token_grow_linearly_with_the_cache(trace):
    cfg = cfg_of("cim.enabled=false")
    d = run_decode(cfg, trace, model_accuracy=False)["decode"]
    m, elem, out_b = trace.meta, cfg.dataflow.element_bytes, cfg.dataflow.output_bytes
    hd = m.head_dim
    for row in d["per_step"]:
        n = row["cache_tokens"]
        # every query head loads its query row and writes its output row; each kv head's n K/V rows are fetched
        # once for its group (GQA: 3 fetches, not 9), and the new token's K/V row is appended once per kv head
        expected = (LAYERS * m.heads * (hd * elem + hd * out_b) + LAYERS * m.kv_heads * n * 2 * hd * elem
                    + LAYERS * m.kv_heads * 2 * hd * elem)
        assert row["dram_bytes"] == expected
    steps = d["per_step"]
    slope = {b["dram_bytes"] - a["dram_bytes"] for a, b in zip(steps, steps[1:])}
    assert slope == {LAYERS * m.kv_heads * 2 * hd * elem}
    assert d["dram_bytes_per_token"]["hybrid"] == pytest.approx(np.mean([r["dram_bytes"] for r in steps]))


def test_pruned_dram_bytes_follow_the_masks_plus_key_msbs(trace):
    cfg = cfg_of()
    d = run_decode(cfg, trace, model_accuracy=False)["decode"]
    m, elem, out_b, kb = trace.meta, cfg.dataflow.element_bytes, cfg.dataflow.output_bytes, cfg.cim.key_bits
    hd = m.head_dim
    layout = decode_layout(trace)
    for t, row in enumerate(d["per_step"]):
        n = P + t + 1
        sub = window(trace, layout, P + t, 1, n)
        func = run_functional(sub.q, sub.k, sub.v, scale=m.scale, causal=True, query_offset=P + t,
                              pruning=pruning_spec(cfg), q_tile=32, k_tile=cfg.cim.key_tile(hd),
                              seed=cfg.seed + t, keep_masks=True)
        kept_keys = sum(int(mask.sum()) for mask in func.masks)  # one query row: kept pairs = kept keys
        group = m.heads // m.kv_heads
        # a kv head's rows kept by any query head of its group are fetched once; its key MSBs fill the array
        # once per step for the whole group
        kept_rows = sum(int(mask.reshape(m.kv_heads, group, -1).any(axis=1).sum()) for mask in func.masks)
        msb = LAYERS * m.kv_heads * n * hd * kb / 8
        append = LAYERS * m.kv_heads * (2 * hd * elem + hd * kb / 8)
        expected = LAYERS * m.heads * hd * (elem + out_b) + kept_rows * 2 * hd * elem + msb + append
        assert row["dram_bytes"] == pytest.approx(expected, rel=1e-12)
        dense = (LAYERS * m.heads * hd * (elem + out_b) + LAYERS * m.kv_heads * n * 2 * hd * elem
                 + LAYERS * m.kv_heads * 2 * hd * elem)
        assert row["dense_dram_bytes"] == dense
        assert 0.2 < kept_keys / (LAYERS * m.heads * n) < 0.3  # the config's 25 % target
    assert d["dram_savings_per_token"] == pytest.approx(
        d["dram_bytes_per_token"]["dense"] / d["dram_bytes_per_token"]["hybrid"])


def test_decode_work_equals_the_causal_prefill_restricted_to_the_last_rows(trace):
    # top-k is decided per query row and, without noise, needs no random stream: the step-wise decode must
    # keep exactly the pairs the block replay of the last G rows keeps
    cfg = cfg_of("pruning.rule=topk", "pruning.topk_keys=20", "cim.noise_sigma_lsb=0", "cim.noise_fraction_fs=0",
                 "pruning.keep_sink_tokens=0", "pruning.keep_recent_tokens=0")
    d = run_decode(cfg, trace, model_accuracy=False)["decode"]
    m = trace.meta
    block = run_functional(trace.q, trace.k, trace.v, scale=m.scale, causal=True, query_offset=P,
                           pruning=pruning_spec(cfg), q_tile=32, k_tile=64, seed=0)
    valid = sum(r["pairs_valid"] for r in d["per_step"])
    assert valid == int(block.dense_chunks["pairs_valid"].sum()) == LAYERS * m.heads * total_pairs(P, G)
    assert sum(r["pairs_kept"] for r in d["per_step"]) == int(block.chunks["pairs_kept"].sum())
    assert sum(r["pairs_kept"] for r in d["per_step"]) == LAYERS * m.heads * G * 20


def test_batch_decodes_sequences_with_their_own_caches(trace):
    cfg = cfg_of("cim.enabled=false")
    one = run_decode(cfg, trace, steps=1, model_accuracy=False)["decode"]
    two = run_decode(cfg, trace, steps=1, batch=2, model_accuracy=False)["decode"]
    assert two["batch"] == 2
    assert two["per_step"][0]["dram_bytes"] == 2 * one["per_step"][0]["dram_bytes"]
    assert two["dram_bytes_per_token"]["hybrid"] == one["dram_bytes_per_token"]["hybrid"]
    # two sequences share the SoC: a step takes longer, but it makes two tokens
    assert two["time_per_output_token_ns"]["mean"] > one["time_per_output_token_ns"]["mean"]


def test_prefill_in_the_trace_gives_time_to_first_token():
    tr = synth_decode("smollm2-135m", prompt=40, generate=2, layers=1, seed=1)
    d = run_decode(cfg_of(), tr, model_accuracy=False)["decode"]
    assert d["prefill_in_trace"] and d["time_to_first_token_ns"] > 0
    assert d["tokens_per_s"] == pytest.approx(1e9 / d["time_per_output_token_ns"]["mean"])
    assert d["time_per_output_token_ns"]["p95"] <= d["time_per_output_token_ns"]["max"]
    assert 0 < d["cim_reload_share"] < 1


def test_bad_decode_metadata_names_the_key(trace):
    meta = trace.meta.to_dict()
    meta["decode"]["generated_tokens"] = G + 1
    with pytest.raises(TraceError, match=r"meta\.decode\.generated_tokens: expected prompt_tokens"):
        TraceMeta.from_dict(meta, "x.npz")
    meta["decode"].update(generated_tokens=G, mode="beam")
    with pytest.raises(TraceError, match=r"meta\.decode\.mode"):
        TraceMeta.from_dict(meta, "x.npz")


def test_soc_run_says_it_is_a_decode(tmp_path, trace, capsys):
    from soc.faces.cli import main

    path = save_trace(tmp_path / "dec.npz", trace.q, trace.k, trace.v, trace.meta)
    assert decode_layout(load_trace(path)).steps == G
    assert main(["run", "--trace", str(path), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "decode trace" in text and "per token" in text and "tokens/s" in text
    import json

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["decode"]["steps"] == G and len(report["decode"]["per_step"]) == G


def test_dense_bytes_without_the_dense_event_loop_match_the_measured_ones(trace):
    full = run_decode(cfg_of(), trace, steps=2, model_accuracy=False)["decode"]
    fast = run_decode(cfg_of(), trace, steps=2, model_accuracy=False, dense_timing=False)["decode"]
    assert fast["dram_bytes_per_token"]["dense"] == full["dram_bytes_per_token"]["dense"]
    assert fast["dram_bytes_per_token"]["hybrid"] == full["dram_bytes_per_token"]["hybrid"]
    assert fast["energy_j_per_token"]["dense"] is None and "dense_tokens_per_s" not in fast


def test_a_synth_decode_trace_is_read_as_a_decode():
    from soc.trace import synth_trace

    legacy = synth_trace("smollm2-135m", layers=1, mode="decode", prompt=50, generate=2)
    layout = decode_layout(legacy)
    assert (layout.prompt, layout.steps, layout.prefill_rows) == (50, 2, False)
    d = run_decode(cfg_of("cim.enabled=false"), legacy, model_accuracy=False)["decode"]
    assert [r["cache_tokens"] for r in d["per_step"]] == [51, 52]


def test_capture_refuses_decode_options_without_decode_mode(capsys):
    from soc.faces.cli import main

    code = main(["trace", "capture", "--model", "smollm2-135m", "--text", "README.md", "--generate", "4",
                 "--out", "/nonexistent/x.npz"])
    assert code == 2 and "only with --mode decode" in capsys.readouterr().err


def test_system_appends_are_real_transfers(trace):
    """The System hook: an append moves its bytes SRAM -> DRAM in the event loop, alongside the walk."""
    from soc.decode import append_transfers
    from soc.system import System

    cfg = cfg_of("cim.enabled=false")
    layout = decode_layout(trace)
    sub = window(trace, layout, P, 1, P + 1)
    shape = shape_of(sub)
    func = run_functional(sub.q, sub.k, sub.v, scale=sub.meta.scale, causal=True, query_offset=P,
                          pruning=pruning_spec(cfg), q_tile=32, k_tile=64)
    plain = System(cfg, shape).run(func.chunks)
    appends = append_transfers(cfg, shape, 1)
    with_append = System(cfg, shape).run(func.chunks, appends)
    nbytes = sum(a[2] for a in appends)
    assert nbytes == LAYERS * trace.meta.kv_heads * 2 * trace.meta.head_dim * cfg.dataflow.element_bytes
    assert with_append.counts["dram"]["write_bytes"] - plain.counts["dram"]["write_bytes"] == nbytes
    assert with_append.counts["sram"]["read_bytes"] - plain.counts["sram"]["read_bytes"] == nbytes
    alone = cfg.dram.latency_ns + nbytes / cfg.dram.bandwidth_gb_per_s
    assert with_append.latency_ns >= max(plain.latency_ns, alone)


def test_dense_best_is_taken_from_the_step_reports_when_present(trace, monkeypatch):
    import soc.decode as dec

    real = dec.assemble

    def with_best(*args, **kw):  # a report as the dense-best dataflow will give it
        res = real(*args, **kw)
        res.report["traffic"]["dense_best"] = {"dram_read_bytes": 1000.0, "dram_write_bytes": 24.0}
        return res

    monkeypatch.setattr(dec, "assemble", with_best)
    d = run_decode(cfg_of(), trace, steps=1, model_accuracy=False)["decode"]
    append = LAYERS * trace.meta.kv_heads * 2 * trace.meta.head_dim  # dense K/V append, 1-byte elements
    assert d["dram_bytes_per_token"]["dense_best"] == 1024.0 + append
    assert d["dram_bytes_per_token"]["dense_best_source"] == "traffic.dense_best"
