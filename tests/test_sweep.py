"""Design-space sweeps: spec parsing and validation, point ids and seeds, the append-only results store, the
executors (serial, local processes, a real Dask LocalCluster) agreeing point for point, resuming after a kill,
and the Pareto front."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import soc
from soc.config.loader import parse_override
from soc.errors import ConfigError, SocError
from soc.sweep import ResultStore, load_sweep, pareto_mask, parse_sweep, plot_pareto, read_results, run_sweep
from soc.sweep.spec import override_text
from soc.sweep.store import METRICS, NONDETERMINISTIC, cell, columns_for

ROOT = Path(__file__).resolve().parent.parent
BASE = str(ROOT / "configs" / "hybrid65nm.yaml")
TINY = {"workload": "minilm-l6", "seq_len": 64, "layers": 1, "seed": 1}
# the exact values behind counts, bytes and time: these must match to the bit between executors
EXACT = ("latency_ns", "cycles", "kept_fraction", "dram_bytes", "sram_bytes", "sim_events", "kv_placement",
         "top1_agreement")


def write_sweep(folder: Path, name: str = "s", **over) -> Path:
    data = {"base": BASE, "traces": [TINY], "factors": {"sram.bank_bytes": [1024, 4096],
                                                        "pruning.target_kept_fraction": [0.25, 0.5]},
            "mode": "product", "seed": 7}
    data.update(over)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def by_id(rows):
    return {r["id"]: r for r in rows}


# --- spec ---------------------------------------------------------------------------------------------------
def test_product_and_zip_expansion_order_seeds_and_ids(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, traces=[TINY, {**TINY, "seed": 2}], replicates=2))
    pts = spec.points()
    assert len(pts) == 2 * 2 * 2 * 2  # 2 x 2 factor values, 2 traces, 2 replicates
    assert len({p.id for p in pts}) == len(pts)
    # the trace is the outer loop, then the replicate, then the factor product in file order
    assert [dict(p.factors)["sram.bank_bytes"] for p in pts[:4]] == [1024, 1024, 4096, 4096]
    assert [dict(p.factors)["pruning.target_kept_fraction"] for p in pts[:4]] == [0.25, 0.5, 0.25, 0.5]
    # common random numbers: one seed per (trace, replicate), the same for every design point
    seeds = {(p.trace.key, p.replicate): set() for p in pts}
    for p in pts:
        seeds[(p.trace.key, p.replicate)].add(p.seed)
    assert all(len(s) == 1 for s in seeds.values())
    assert len({s.pop() for s in seeds.values()}) == 4
    # stable: parsing again (from another working directory) gives the same ids and seeds
    again = load_sweep(tmp_path / "s.yaml").points()
    assert [(p.id, p.seed) for p in again] == [(p.id, p.seed) for p in pts]
    # the id is the point, not the factor order
    flipped = write_sweep(tmp_path, "f", traces=[TINY, {**TINY, "seed": 2}], replicates=2,
                          factors={"pruning.target_kept_fraction": [0.25, 0.5],
                                   "sram.bank_bytes": [1024, 4096]})
    assert {p.id for p in load_sweep(flipped).points()} == {p.id for p in pts}
    # another base seed moves every seed and so every id
    other = load_sweep(write_sweep(tmp_path, "o", traces=[TINY, {**TINY, "seed": 2}], replicates=2, seed=8))
    assert not {p.id for p in other.points()} & {p.id for p in pts}

    z = load_sweep(write_sweep(tmp_path, "z", mode="zip", factors={"dataflow.q_tile_rows": [16, 32, 16],
                                                                   "pruning.margin": [2.0, 3.0, 4.0]}))
    assert [dict(p.factors) for p in z.points()] == [
        {"dataflow.q_tile_rows": 16, "pruning.margin": 2.0},
        {"dataflow.q_tile_rows": 32, "pruning.margin": 3.0},
        {"dataflow.q_tile_rows": 16, "pruning.margin": 4.0}]


def test_example_sweep_is_valid():
    spec = load_sweep(ROOT / "sweeps" / "paper-pruning.yaml")
    assert len(spec.points()) == 54
    assert Path(spec.base) == ROOT / "configs" / "hybrid65nm.yaml"
    assert Path(spec.traces[0].path).is_file() and spec.traces[1].synth is not None


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False),
                 st.booleans(),
                 st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
                 st.sampled_from(["true", "1e-3", "null", "a: b", "[1, 2]", "- x", "0x10", "'q'", ""]),
                 st.lists(st.integers(0, 99), max_size=4)))
def test_override_text_round_trips_through_the_config_parser(value):
    parts, parsed = parse_override(override_text("a.b", value))
    assert parts == ["a", "b"]
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("over, match", [
    ({"mode": "grid"}, r"s\.yaml: mode: expected product or zip, got 'grid'"),
    ({"colour": 1}, r"s\.yaml: colour: unknown key"),
    ({"base": "nope.yaml"}, r"s\.yaml: base: no such config file"),
    ({"traces": []}, r"s\.yaml: traces: expected a non-empty list"),
    ({"traces": ["missing.npz"]}, r"s\.yaml: traces\[0\]: no such trace 'missing.npz'"),
    ({"traces": [{"workload": "minilm-l6", "seqlen": 64}]}, r"traces\[0\]\.seqlen: unknown key"),
    ({"traces": [{**TINY, "layers": 99}]}, r"traces\[0\]\.layers: expected an integer in \[1, 6\], got 99"),
    ({"traces": [TINY, TINY]}, r"traces: trace 'synth:workload=minilm-l6.*' is listed twice"),
    ({"factors": {"dataflow.q_tile_rows": []}}, r"factors\.dataflow\.q_tile_rows: expected a non-empty list"),
    ({"factors": {"dataflow.q_tile_rows": [16, 0]}},
     r"factors\.dataflow\.q_tile_rows\[1\]: 0 is not a valid value "
     r".*expected an integer in \[1, 4096\], got 0"),
    ({"factors": {"dataflow.q_tile_rowz": [16]}},
     r"factors\.dataflow\.q_tile_rowz\[0\]: 16 is not a valid value"),
    ({"factors": {"dataflow.q_tile_rows": [16, 16]}},
     r"factors.dataflow.q_tile_rows\[1\]: 16 repeats the value at index 0"),
    ({"factors": {"dataflow.q_tile_rows": [1, 1.0]}}, r"q_tile_rows\[1\]: 1.0 repeats the value at index 0"),
    ({"mode": "zip", "factors": {"dataflow.q_tile_rows": [16, 32], "pruning.margin": [1.0]}},
     r"mode zip needs value lists of one length, got dataflow\.q_tile_rows: 2, pruning\.margin: 1"),
    ({"seed": -1}, r"s\.yaml: seed: expected an integer >= 0, got -1"),
    ({"replicates": 0}, r"s\.yaml: replicates: expected an integer in \[1, 1000\], got 0"),
])
def test_bad_sweep_files_name_the_file_and_the_key(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep(write_sweep(tmp_path, **over))


def test_bad_sweep_top_level_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"x\.yaml: no such sweep file"):
        load_sweep(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match=r"<sweep>: traces: missing"):
        parse_sweep({"base": BASE})
    with pytest.raises(ConfigError, match=r"expected a mapping with base, traces and factors, got list"):
        parse_sweep([1, 2])


# --- results store ------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_cells_round_trip_exactly(x):
    assert float(cell(x)) == x


def test_store_drops_a_torn_line_appends_whole_rows_and_locks(tmp_path):
    cols = columns_for(("a.b",))
    store = ResultStore(tmp_path, cols)
    assert store.open() == {}
    store.append({"id": "p1", "a.b": 1, "status": "ok", "latency_ns": 1.5,
                  "error": "multi\nline, with comma"})
    store.append({"id": "p2", "a.b": 2, "status": "error", "error": "boom"})
    with pytest.raises(SocError, match="another sweep is writing to this directory"):
        ResultStore(tmp_path, cols).open()
    store.close()
    path = tmp_path / "results.csv"
    with open(path, "ab") as handle:  # a crash in the middle of a row (a full disk, a power cut)
        handle.write(b"p3,3,synth:x,1,0,ok,,12")
    assert [r["id"] for r in read_results(path)] == ["p1", "p2"]
    store = ResultStore(tmp_path, cols)
    done = store.open()
    assert list(done) == ["p1", "p2"] and done["p1"]["error"] == "multi line, with comma"
    assert path.read_bytes().endswith(b"\n") and b"p3" not in path.read_bytes()
    store.append({"id": "p3", "a.b": 3, "status": "ok"})
    kept = store.drop_failed()
    assert list(kept) == ["p1", "p3"]
    store.close()
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["id"] for r in rows] == ["p1", "p3"] and rows[0]["latency_ns"] == "1.5"
    with pytest.raises(SocError, match=r"columns .* differ from this sweep's"):
        ResultStore(tmp_path, columns_for(("c.d",))).open()


# --- Pareto -------------------------------------------------------------------------------------------------
@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 3)), min_size=0, max_size=40))
def test_pareto_mask_matches_brute_force(points):
    obj = np.array(points, dtype=float).reshape(-1, 3)
    def dominates(q, p):
        pairs = list(zip(q, p, strict=True))
        return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)
    want = [not any(dominates(q, p) for q in points) for p in points]
    assert pareto_mask(obj).tolist() == want


# --- running ------------------------------------------------------------------------------------------------
def test_serial_sweep_records_every_point_resumes_and_retries(tmp_path):
    spec = load_sweep(write_sweep(tmp_path))
    out = tmp_path / "out"
    s = run_sweep(spec, out, executor="serial", plot=False, progress=None)
    assert (s.total, s.resumed, s.ran) == (4, 0, 4)
    rows = by_id(s.rows)
    assert set(rows) == {p.id for p in spec.points()}
    for p in spec.points():
        row = rows[p.id]
        assert row["trace"] == p.trace.key and int(row["seed"]) == p.seed
        if dict(p.factors)["sram.bank_bytes"] == 1024:  # 8 KB of SRAM cannot hold two key tiles
            assert row["status"] == "error" and row["error"].startswith("WiringError: sram: 8192 bytes")
            assert row["latency_ns"] == "" and not (out / "points" / p.id).exists()
            continue
        assert row["status"] == "ok" and row["error"] == ""
        report = json.loads((out / "points" / p.id / "report.json").read_text())
        # the row is the point's report; the report is what a direct simulation with the recorded seed gives
        trace = soc.synth_trace("minilm-l6", seq_len=64, layers=1, seed=1)
        direct = soc.simulate(soc.load_config(BASE, p.overrides), trace, seed=p.seed).report
        assert float(row["latency_ns"]) == report["time"]["latency_ns"] == direct["time"]["latency_ns"]
        traffic = direct["traffic"]
        assert float(row["dram_bytes"]) == traffic["dram_read_bytes"] + traffic["dram_write_bytes"]
        assert float(row["kept_fraction"]) == direct["pruning"]["kept_fraction"]
        assert float(row["energy_j"]) == pytest.approx(direct["energy"]["total_j"], rel=1e-12)
        assert report["config"]["sram"]["bank_bytes"] == 4096
    before = (out / "results.csv").read_bytes()
    log = io.StringIO()
    again = run_sweep(spec, out, executor="serial", plot=False, progress=log)
    assert (again.resumed, again.ran) == (4, 0) and (out / "results.csv").read_bytes() == before
    assert log.getvalue() == "sweep s: 4/4 points (4 resumed, 2 failed)\n"
    recorded = json.loads((out / "sweep.json").read_text())
    (out / "sweep.json").write_text(json.dumps({**recorded, "base_sha256": "0" * 64}))  # as if base changed
    log = io.StringIO()
    run_sweep(spec, out, executor="serial", plot=False, progress=log)
    assert "hybrid65nm.yaml changed since the finished rows" in log.getvalue()
    retry = run_sweep(spec, out, executor="serial", plot=False, progress=None, retry_failed=True)
    assert (retry.resumed, retry.ran, retry.failed) == (2, 2, 2)
    assert sorted(r["id"] for r in read_results(out / "results.csv")) == sorted(rows)


def test_run_sweep_argument_errors(tmp_path):
    spec = load_sweep(write_sweep(tmp_path))
    with pytest.raises(ConfigError, match="--executor: expected one of serial, processes, dask, got 'mpi'"):
        run_sweep(spec, tmp_path / "o", executor="mpi", progress=None)
    with pytest.raises(ConfigError, match="--scheduler tcp://h:1: only meaningful with --executor dask"):
        run_sweep(spec, tmp_path / "o", executor="processes", scheduler="tcp://h:1", progress=None)
    clash = load_sweep(write_sweep(tmp_path, "c", factors={"seed": [1, 2]}))
    with pytest.raises(ConfigError, match=r"factors\.seed: a results\.csv column of its own"):
        run_sweep(clash, tmp_path / "o", executor="serial", progress=None)


def _same_results(a, b):
    assert a.keys() == b.keys()
    for pid in a:
        for col, x in a[pid].items():
            y = b[pid][col]
            if col in NONDETERMINISTIC:
                continue
            if col in EXACT or col not in METRICS or x == "" or y == "":
                assert x == y, (pid, col)
            else:  # BLAS may split a float32 GEMM across threads differently in another process: 1 ulp
                assert float(x) == pytest.approx(float(y), rel=1e-12, abs=1e-300), (pid, col)


def test_dask_local_cluster_matches_serial(tmp_path):
    pytest.importorskip("distributed")
    trace = tmp_path / "tiny.npz"
    t = soc.synth_trace("smollm2-135m", seq_len=96, layers=2, seed=3)
    soc.save_trace(trace, t.q, t.k, t.v, t.meta)
    spec = load_sweep(write_sweep(tmp_path, traces=[TINY, str(trace)],
                                  factors={"pruning.target_kept_fraction": [0.2, 0.5],
                                           "dataflow.q_tile_rows": [16, 32], "sram.bank_bytes": [1024, 4096]},
                                  mode="zip"))
    serial = run_sweep(spec, tmp_path / "serial", executor="serial", plot=False, progress=None)
    dask = run_sweep(spec, tmp_path / "dask", executor="dask", workers=2, plot=False, progress=None)
    assert (dask.total, dask.ran) == (4, 4)
    assert sum(r["status"] == "ok" for r in dask.rows) == 2
    _same_results(by_id(serial.rows), by_id(dask.rows))
    for row in dask.rows:  # reports came back from the workers and were written by the driver
        report = tmp_path / "dask" / "points" / row["id"] / "report.json"
        assert report.exists() == (row["status"] == "ok")


def _cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "soc", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _rows_in(path: Path) -> int:
    return len(read_results(path)) if path.exists() else 0


def _kill_when(proc, path: Path, rows: int, sig: int) -> int:
    deadline = time.monotonic() + 60
    while _rows_in(path) < rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, sig)  # the CLI and its worker processes: what Ctrl-C or a kill -9 does
    proc.communicate(timeout=60)
    return proc.returncode


def test_killed_sweep_resumes_and_records_every_point_exactly_once(tmp_path):
    slower = {**TINY, "seq_len": 128, "layers": 2}  # ~0.2 s a point: the kill lands mid-sweep
    sweep = write_sweep(tmp_path, traces=[slower, {**slower, "seed": 2}],
                        factors={"pruning.target_kept_fraction": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    ids = {p.id for p in load_sweep(sweep).points()}
    out = tmp_path / "out"
    csv_path = out / "results.csv"
    args = ["sweep", str(sweep), "--out", str(out), "--executor", "processes", "--workers", "2", "--no-plot"]

    # Ctrl-C: exit status 130, a consistent file
    rc = _kill_when(_cli(args), csv_path, 2, signal.SIGINT)
    first = read_results(csv_path)
    assert rc == 130 and 2 <= len(first) < len(ids)
    assert csv_path.read_bytes().endswith(b"\n")
    # kill -9 of the driver and its workers in the next run, then a torn row as a crashed write would leave
    proc = _cli(args)
    rc = _kill_when(proc, csv_path, len(first) + 2, signal.SIGKILL)
    second = read_results(csv_path)
    assert rc == -signal.SIGKILL and len(first) < len(second) < len(ids)
    assert second[:len(first)] == first  # finished rows are never rewritten
    with open(csv_path, "a") as handle:
        handle.write(second[0]["id"][:8])

    done = _cli(args)
    _, stderr = done.communicate(timeout=120)
    assert done.returncode == 0, stderr
    assert f"({len(second)} resumed, 0 failed)" in stderr
    final = read_results(csv_path)
    assert final[:len(second)] == second
    assert sorted(r["id"] for r in final) == sorted(ids)  # every point exactly once
    assert len(csv_path.read_text().splitlines()) == len(ids) + 1
    for row in final:
        report = json.loads((out / "points" / row["id"] / "report.json").read_text())
        assert row["status"] == "ok" and float(row["latency_ns"]) == report["time"]["latency_ns"]


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    bad = write_sweep(tmp_path, mode="grid")
    for args, match in ((["sweep", str(bad), "--out", str(tmp_path / "o")], "mode: expected product or zip"),
                        (["sweep", str(write_sweep(tmp_path, "g")), "--out", str(tmp_path / "o"),
                          "--executor", "serial", "--scheduler", "tcp://127.0.0.1:1"],
                         "only meaningful with")):
        proc = _cli(args)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and err.count("\n") == 1 and match in err and "Traceback" not in err


def test_pareto_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"id": str(i), "trace": "t", "status": "ok", "latency_ns": str(1000.0 * (i + 1)),
             "energy_j": str(1e-6 / (i + 1)), "output_rel_err": str(0.1 * i)} for i in range(5)]
    rows.append({"id": "x", "trace": "t", "status": "error", "latency_ns": "", "energy_j": ""})
    png = plot_pareto(rows, tmp_path / "p.png", title="t")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_pareto(rows[-1:], tmp_path / "q.png") is None and not (tmp_path / "q.png").exists()


KILLER = '''
import os
from soc.sweep.executors import Outcome

def run(task):
    if task.id == "die" or task.base == "always":
        os._exit(3)  # what the kernel's OOM killer or a segfault does to a worker
    return Outcome(task.id, "ok", worker=str(os.getpid()))
'''


def test_a_point_that_kills_its_worker_is_recorded_and_the_rest_finish(tmp_path, monkeypatch):
    from soc.sweep.executors import ProcessExecutor, Task
    from soc.sweep.spec import TraceRef

    (tmp_path / "sweep_killer.py").write_text(KILLER)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    import sweep_killer

    ex = ProcessExecutor(workers=2)
    ex.fn = sweep_killer.run
    ids = ["a", "die", "b", "c", "d"]
    outcomes = list(ex.run(Task(i, BASE, (), TraceRef(key="t", path="/nonexistent"), 0) for i in ids))
    assert sorted(o.id for o in outcomes) == sorted(ids)  # every point exactly once
    status = {o.id: (o.status, o.error) for o in outcomes}
    died = "the worker process died running this point alone (killed, or out of memory?)"
    assert status["die"] == ("error", died)
    assert all(status[i] == ("ok", "") for i in ids if i != "die")  # the points in flight beside it finish

    ex.fn = sweep_killer.run
    always = [Task(i, "always", (), TraceRef(key="t", path="/nonexistent"), 0) for i in ids]
    with pytest.raises(SocError, match="worker processes die before finishing any point; run with --executor "
                                      "serial to see why"):
        list(ex.run(always))


def test_rows_are_identical_across_serial_processes_and_dask_at_one_blas_thread(tmp_path):
    """One BLAS thread in every executor (the default): not merely close, the same rows, cell for cell."""
    pytest.importorskip("distributed")
    spec = load_sweep(write_sweep(tmp_path, traces=[TINY],
                                  factors={"pruning.target_kept_fraction": [0.2, 0.5]}))
    runs = {name: run_sweep(spec, tmp_path / name, executor=name, workers=2, plot=False, progress=None)
            for name in ("serial", "processes", "dask")}
    rows = {name: by_id(r.rows) for name, r in runs.items()}
    assert all(r["status"] == "ok" for r in rows["serial"].values()) and len(rows["serial"]) == 2
    for name in ("processes", "dask"):
        assert rows[name].keys() == rows["serial"].keys()
        for pid, row in rows["serial"].items():
            assert {c: v for c, v in row.items() if c not in NONDETERMINISTIC} == \
                   {c: v for c, v in rows[name][pid].items() if c not in NONDETERMINISTIC}, name
