"""One run split by layer: the layer barrier, the merge, and serial = processes = Dask (every field, sim aside)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from soc.config import load_config
from soc.config.schema import DramConfig
from soc.errors import ConfigError
from soc.recorder import MemorySink, Recorder
from soc.shard import layer_slices, merge_functional, merge_stats
from soc.simulate import pruning_spec, shape_of, simulate
from soc.system import System

PAPER = "configs/hybrid65nm.yaml"


@pytest.fixture(scope="module")
def dir_trace(tmp_path_factory):
    """A 3-layer BERT-shaped directory trace (memory-mapped when loaded, as workers open it)."""
    from soc.trace import load_trace, save_trace, synth_trace

    t = synth_trace("bert-base", seq_len=128, layers=3, seed=3)
    path = save_trace(tmp_path_factory.mktemp("shard") / "bert3", t.q, t.k, t.v, t.meta)
    return load_trace(path, mmap=True)


def _banked(cfg):
    return dataclasses.replace(cfg, dram=DramConfig(kind="banked", preset="ddr4-3200", refresh=True))


def _no_sim(report: dict) -> str:
    return json.dumps({k: v for k, v in report.items() if k != "sim"}, sort_keys=True)


def test_serial_processes_and_dask_give_the_same_report(dir_trace):
    """Every report field but ``sim``, exactly, on a banked DRAM (row-buffer statistics merge too)."""
    distributed = pytest.importorskip("distributed")
    cfg = _banked(load_config(PAPER))
    serial = simulate(cfg, dir_trace)
    procs = simulate(cfg, dir_trace, workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster:
        dask = simulate(cfg, dir_trace, scheduler=cluster.scheduler_address)
    want = _no_sim(serial.report)
    assert _no_sim(procs.report) == want
    assert _no_sim(dask.report) == want
    assert serial.report["memory"]["dram"]["row_hits"] > 0
    for res in (procs, dask):  # the tables behind the report, too
        for key, col in serial.demand.items():
            np.testing.assert_array_equal(res.demand[key], col, err_msg=key)
        for key, col in serial.functional.chunks.items():
            np.testing.assert_array_equal(res.functional.chunks[key], col, err_msg=key)


def test_a_merged_run_keeps_no_demand_table_unless_asked(dir_trace, paper_cfg):
    """Memory: without a timeline the merged stats hold no whole-run demand table, the K/V rows fetched are the
    layers' sums, and ``Result.demand`` rebuilds the table equal to the layers' own tables concatenated (what
    a timeline run keeps) and to the driver's recomputation from parts that sent none."""
    from soc.shard import run_layers

    res = simulate(paper_cfg, dir_trace)
    assert res.stats.demand == {}
    shape, func = shape_of(dir_trace), res.functional
    kept = run_layers(paper_cfg, shape, func.chunks, keep_demand=True)
    parts = [System(paper_cfg, shape).run({k: v[rows] for k, v in func.chunks.items()}).portable()
             for _, rows in layer_slices(func.chunks)]
    recomputed = merge_stats(paper_cfg, shape, parts, func.chunks, keep_demand=True)
    assert merge_stats(paper_cfg, shape, parts, func.chunks).demand == {}
    assert len(res.demand["kv_fetch_rows"]) == len(func.chunks["layer"])
    assert set(kept.demand) == set(res.demand) == set(recomputed.demand)
    for key, col in res.demand.items():
        np.testing.assert_array_equal(kept.demand[key], col, err_msg=key)
        np.testing.assert_array_equal(recomputed.demand[key], col, err_msg=key)
    assert res.stats.kv_rows_fetched == kept.kv_rows_fetched == float(res.demand["kv_fetch_rows"].sum()) > 0
    timeline = simulate(paper_cfg, dir_trace, recorder=Recorder(MemorySink()))
    assert set(timeline.stats.demand) == set(res.demand)
    for key, col in res.demand.items():
        np.testing.assert_array_equal(timeline.stats.demand[key], col, err_msg=key)


def test_the_model_is_the_sum_of_independent_single_layer_runs(dir_trace):
    """Layer barrier: with no analog noise and one rule for all layers, each layer of the whole run prunes and
    times exactly as a one-layer trace of that layer alone; latency, events, bytes and busy times add."""
    from soc.trace.format import Trace

    # no thermal noise (its streams are per layer index); the fixed pattern is per array column, the same for
    # every layer on the one CIM core
    cfg = load_config(PAPER, ["cim.noise_sigma_lsb=0", "cim.noise_fraction_fs=0"])
    whole = simulate(cfg, dir_trace)
    alone = []
    for layer in range(dir_trace.meta.layers):
        one = slice(layer, layer + 1)
        meta = dataclasses.replace(dir_trace.meta, layers=1)
        alone.append(simulate(cfg, Trace(np.asarray(dir_trace.q[one]), np.asarray(dir_trace.k[one]),
                                         np.asarray(dir_trace.v[one]), meta)))
    r = whole.report
    assert r["time"]["latency_ns"] == sum(a.report["time"]["latency_ns"] for a in alone)
    assert r["sim"]["events"] == sum(a.report["sim"]["events"] for a in alone)
    for key in ("dram_read_bytes", "dram_write_bytes", "sram_read_bytes", "sram_write_bytes"):
        assert r["traffic"][key] == pytest.approx(sum(a.report["traffic"][key] for a in alone), rel=1e-12)
    busy = sum(a.stats.busy_ns["digital0"] for a in alone)
    assert whole.stats.busy_ns["digital0"] == pytest.approx(busy, rel=1e-12)
    assert r["utilization"]["digital"] == pytest.approx(busy / r["time"]["latency_ns"], rel=1e-12)


def test_dram_row_statistics_merge_as_counts(dir_trace, paper_cfg):
    """Row hits, misses, conflicts and bursts add over the layers' runs; rates come from the sums."""
    cfg = _banked(paper_cfg)
    shape = shape_of(dir_trace)
    res = simulate(cfg, dir_trace)
    chunks = res.functional.chunks
    parts = [System(cfg, shape).run({k: v[rows] for k, v in chunks.items()}).portable()
             for _, rows in layer_slices(chunks)]
    merged = merge_stats(cfg, shape, parts, chunks).memory["dram"]
    assert merged == res.report["memory"]["dram"]
    for key in ("row_hits", "row_misses", "row_conflicts", "read_bursts", "write_bursts", "activations"):
        assert merged[key] == sum(p.memory["dram"][key] for p in parts)
    bursts = merged["read_bursts"] + merged["write_bursts"]
    assert merged["row_hit_rate"] == merged["row_hits"] / bursts
    latency = sum(p.latency_ns for p in parts)
    assert merged["achieved_bandwidth_gb_per_s"] == pytest.approx(merged["bytes_moved"] / latency, rel=1e-12)
    assert merged["channel_busy_ns"] == pytest.approx(
        [sum(c) for c in zip(*(p.memory["dram"]["channel_busy_ns"] for p in parts))], rel=1e-12)


def test_functional_passes_over_layers_merge_into_the_whole_pass(dir_trace, paper_cfg):
    from soc.attention.functional import run_functional

    m = dir_trace.meta
    kw = dict(scale=m.scale, causal=m.causal, pruning=pruning_spec(paper_cfg),
              q_tile=paper_cfg.dataflow.q_tile_rows, k_tile=System(paper_cfg, shape_of(dir_trace)).key_tile, seed=4)
    whole = run_functional(dir_trace.q, dir_trace.k, dir_trace.v, **kw)
    parts = [run_functional(dir_trace.q, dir_trace.k, dir_trace.v, layers=[layer], **kw) for layer in range(m.layers)]
    merged = merge_functional(parts)
    for table in ("chunks", "dense_chunks"):
        for key, col in getattr(whole, table).items():
            np.testing.assert_array_equal(getattr(merged, table)[key], col, err_msg=f"{table}.{key}")
    assert merged.accuracy == whole.accuracy
    assert merged.per_layer == whole.per_layer
    with pytest.raises(ConfigError, match="layers: expected increasing"):
        run_functional(dir_trace.q, dir_trace.k, dir_trace.v, layers=[2, 1], **kw)


def test_a_timeline_shows_each_layer_after_the_layers_before(dir_trace, paper_cfg):
    sink = MemorySink()
    res = simulate(paper_cfg, dir_trace, recorder=Recorder(sink))
    chunks = res.functional.chunks
    shape = shape_of(dir_trace)
    ends = np.cumsum([System(paper_cfg, shape).run({k: v[rows] for k, v in chunks.items()}).latency_ns
                      for _, rows in layer_slices(chunks)])
    starts = np.concatenate(([0.0], ends[:-1]))
    seen = set()
    for _, start, end, _, args in sink.spans:
        if args and "layer" in args:
            layer = args["layer"]
            seen.add(layer)
            assert starts[layer] - 1e-6 <= start <= end <= ends[layer] + 1e-6
    assert seen == set(range(shape.layers))
    assert ends[-1] == pytest.approx(res.report["time"]["latency_ns"], rel=1e-12)


def test_cli_run_with_two_workers_writes_the_serial_report(dir_trace, tmp_path):
    from soc.faces.cli import main

    assert main(["run", "--trace", dir_trace.path, "--out", str(tmp_path / "serial")]) == 0
    assert main(["run", "--trace", dir_trace.path, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("serial", "two"))
    assert _no_sim(a) == _no_sim(b)


def test_bad_sharding_requests_are_refused(dir_trace, paper_cfg, small_trace, tmp_path, capsys):
    from soc.faces.cli import main

    with pytest.raises(ConfigError, match="workers: expected an integer >= 1"):
        simulate(paper_cfg, dir_trace, workers=0)
    with pytest.raises(ConfigError, match="opens the trace by path"):
        simulate(paper_cfg, small_trace, workers=2)
    with pytest.raises(ConfigError, match="a timeline needs the serial run"):
        simulate(paper_cfg, dir_trace, workers=2, recorder=Recorder(MemorySink()))
    assert main(["run", "--trace", dir_trace.path, "--out", str(tmp_path), "--workers", "2",
                 "--timeline", str(tmp_path / "t.json")]) == 2
    assert "timeline or plots need the serial run" in capsys.readouterr().err
