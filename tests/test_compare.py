"""`soc compare`: outputs, the DRAM savings against an independent count from the masks, shared functional
passes, bad input, and (opt-in) the BERT-base time budget."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from soc.faces.cli import default_trace, main
from soc.faces.compare import rows, run_configs
from soc.config import load_config
from soc.simulate import simulate
from soc.trace import load_trace


@pytest.fixture(scope="module")
def real_trace():
    return load_trace(default_trace())


@pytest.fixture(scope="module")
def compared(tmp_path_factory, real_trace):
    out = tmp_path_factory.mktemp("cmp")
    code = main(["compare", "configs/hybrid65nm.yaml", "configs/dense-digital.yaml", "--trace",
                 str(default_trace()), "--out", str(out)])
    assert code == 0
    with open(out / "compare.csv", newline="") as f:
        table = {r["config"]: r for r in csv.DictReader(f)}
    return out, table


def independent_dram_bytes(cfg, trace, masks, key_tile: int, msb_on_chip: bool, kv: str) -> float:
    """DRAM bytes recounted from keep masks without the dataflow module: Q in, outputs back, the K and V rows
    (stream: for every query tile of every query head, the rows any of its rows keeps; resident: once per KV
    head, the rows any query of its query heads keeps), plus the keys' MSBs the CIM array needs (once per KV
    head when they stay in SRAM or fit the array in one tile, else on every array load)."""
    m = trace.meta
    hd, elem = m.head_dim, cfg.dataflow.element_bytes
    qt = cfg.dataflow.q_tile_rows
    seq_q, seq_k = trace.q.shape[2], m.seq_len
    group = m.heads // m.kv_heads
    total = m.layers * m.heads * seq_q * hd * (elem + cfg.dataflow.output_bytes)
    for mask in masks:  # (heads, seq_q, seq_k) per layer
        if kv == "resident":
            total += mask.reshape(m.kv_heads, group * seq_q, seq_k).any(axis=1).sum() * 2 * hd * elem
            continue
        for q0 in range(0, seq_q, qt):
            total += mask[:, q0:q0 + qt].any(axis=1).sum() * 2 * hd * elem
    if cfg.cim.enabled:
        msb_per_key = hd * cfg.cim.key_bits / 8
        if msb_on_chip or seq_k <= key_tile:
            total += m.layers * m.kv_heads * seq_k * msb_per_key
        else:
            total += m.layers * m.heads * -(-seq_q // qt) * seq_k * msb_per_key
    return float(total)


def test_compare_writes_csv_markdown_and_png(compared):
    out, table = compared
    assert set(table) == {"hybrid65nm", "dense-digital"}
    for col in ("latency_us", "energy_total_uj", "energy_dram_uj", "dram_read_bytes", "sram_read_bytes",
                "dram_row_hit_rate", "util_digital", "util_links", "dram_savings_vs_dense"):
        assert col in table["hybrid65nm"], col
    md = (out / "compare.md").read_text()
    assert md.count("\n| ") == 3 and "| hybrid65nm |" in md and "DRAM vs dense" in md
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_hybrid_and_dense_dram_bytes_differ_by_the_factor_the_masks_predict(compared, real_trace):
    """With the default (auto: a MiniLM head's K/V stays resident) both sides fetch each K/V row once per
    head, so pruning saves little DRAM traffic and pays for the keys' MSBs; the count says by how much."""
    _, table = compared
    hyb_cfg, dense_cfg = load_config("configs/hybrid65nm.yaml"), load_config("configs/dense-digital.yaml")
    hyb = simulate(hyb_cfg, real_trace, keep_masks=True)
    assert hyb.stats.placement.kv == "resident"
    m = real_trace.meta
    # dense attention keeps every valid pair: the mask is the validity (causal or not) itself
    valid = np.ones((m.seq_len, m.seq_len), dtype=bool)
    if m.causal:
        valid = np.tril(valid)
    dense_masks = [np.broadcast_to(valid, (m.heads, m.seq_len, m.seq_len))] * m.layers
    want_h = independent_dram_bytes(hyb_cfg, real_trace, hyb.functional.masks, hyb.stats.key_tile,
                                    hyb.stats.placement.msb_on_chip, "resident")
    want_d = independent_dram_bytes(dense_cfg, real_trace, dense_masks, hyb.stats.key_tile, False, "resident")
    got = {name: float(r["dram_read_bytes"]) + float(r["dram_write_bytes"]) for name, r in table.items()}
    assert got["hybrid65nm"] == pytest.approx(want_h, rel=1e-6)
    assert got["dense-digital"] == pytest.approx(want_d, rel=1e-6)
    factor = want_d / want_h
    assert got["dense-digital"] / got["hybrid65nm"] == pytest.approx(factor, rel=1e-6)
    # the hybrid row's own counterfactual column says the same
    assert float(table["hybrid65nm"]["dram_savings_vs_dense"]) == pytest.approx(factor, rel=1e-5)
    # streamed, the union of a query tile's survivors is what pruning saves: the hybrid undercuts dense
    stream = ["dataflow.kv_placement=stream"]
    hyb_s = simulate(load_config("configs/hybrid65nm.yaml", stream), real_trace, functional=hyb.functional,
                     model_accuracy=False)
    want_s = independent_dram_bytes(hyb_cfg, real_trace, hyb.functional.masks, hyb.stats.key_tile,
                                    hyb_s.stats.placement.msb_on_chip, "stream")
    want_ds = independent_dram_bytes(dense_cfg, real_trace, dense_masks, hyb.stats.key_tile, False, "stream")
    t = hyb_s.report["traffic"]
    assert t["dram_read_bytes"] + t["dram_write_bytes"] == pytest.approx(want_s, rel=1e-6)
    assert t["dense"]["dram_read_bytes"] + t["dense"]["dram_write_bytes"] == pytest.approx(want_ds, rel=1e-6)
    assert t["savings"]["dram"] == pytest.approx(want_ds / want_s, rel=1e-6) and want_ds > want_s
    # ... but not the best dense dataflow, which keeps a head's K/V resident
    assert t["dense_best"]["kv_placement"] == "resident"
    assert t["dense_best"]["dram_read_bytes"] + t["dense_best"]["dram_write_bytes"] == pytest.approx(want_d)


def test_configs_differing_in_memory_share_one_functional_pass(small_trace):
    # streamed K/V: the DRAM channel, not the digital side, sets the pace
    stream = ["dataflow.kv_placement=stream"]
    cfgs = [load_config("configs/mem-lpddr4.yaml", stream), load_config("configs/mem-ddr4.yaml", stream)]
    results = run_configs(cfgs, small_trace)
    assert results[0].functional is results[1].functional
    alone = simulate(cfgs[1], small_trace)
    assert results[1].report["time"]["latency_ns"] == alone.report["time"]["latency_ns"]
    assert results[1].report["traffic"]["dram_read_bytes"] == alone.report["traffic"]["dram_read_bytes"]
    table = rows(results, ["a.yaml", "b.yaml"])
    assert [r["config"] for r in table] == ["mem-lpddr4", "mem-ddr4"]
    for r in table:  # banked DRAM reports its row buffers
        assert 0.0 < r["dram_row_hit_rate"] <= 1.0
    # one LPDDR4 x16 channel (6.4 GB/s) cannot be faster than one DDR4 x64 channel (25.6 GB/s)
    assert table[0]["latency_us"] >= table[1]["latency_us"]


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main(["compare", "configs/nope.yaml", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.yaml" in err and "\n" not in err
    assert main(["compare", "configs/hybrid65nm.yaml", "--trace", str(tmp_path / "missing.npz"),
                 "--out", str(tmp_path)]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert not (tmp_path / "compare.csv").exists()


def test_configs_share_one_functional_pass(small_trace):
    """Memory-hierarchy variants prune alike, so compare runs the numpy pass once (what keeps it fast)."""
    cfgs = [load_config(f"configs/mem-{n}.yaml") for n in ("kv-onchip", "lpddr4", "ddr4", "hbm2")]
    results = run_configs(cfgs, small_trace)
    assert len({id(r.functional) for r in results}) == 1
    assert all(r.report["time"]["latency_ns"] > 0 for r in results)
