"""The command line: outputs, and bad input -> exit 2 with one line, never a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soc.faces.cli import main
from soc.errors import SimulationStalled

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soc", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_run_with_no_arguments_writes_a_report(tmp_path):
    proc = run_cli("run", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["schema"] == "soc.report/1"
    assert report["workload"]["source"] == "capture"  # a real bundled trace
    assert 0 < report["pruning"]["kept_fraction"] < 1
    assert "latency" in proc.stdout and "kept" in proc.stdout


def test_dense_config_reports_exact_output(tmp_path, capsys):
    assert main(["run", "--config", "configs/dense-digital.yaml", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pruning"]["kept_fraction"] == 1.0
    assert report["accuracy"]["output_rel_err"] < 1e-5
    hybrid = tmp_path / "h"
    assert main(["run", "--set", "dataflow.kv_placement=stream", "--out", str(hybrid)]) == 0
    r = json.loads((hybrid / "report.json").read_text())
    assert r["pruning"]["kept_fraction"] < 1 and r["traffic"]["savings"]["dram"] > 1


def _bad_npz(path: Path) -> Path:
    np.savez(path, q=np.zeros((1, 2, 4, 8), np.float32), k=np.zeros((1, 2, 5, 8), np.float32),
             v=np.zeros((1, 2, 5, 8), np.float32))
    return path


@pytest.mark.parametrize("make_args, message", [
    (lambda t: ["run", "--config", str(t / "nope.yaml")], "no such config file"),
    (lambda t: ["run", "--set", "sram.banks=-2"], r"sram.banks: expected an integer in \[1, 1024\], got -2"),
    (lambda t: ["run", "--set", "cim.nonsense=1"], "cim.nonsense: unknown key"),
    (lambda t: ["run", "--trace", str(t / "missing.npz")], "missing.npz"),
    (lambda t: ["run", "--trace", str(_bad_npz(t / "bad.npz"))], "bad.npz"),
    (lambda t: ["run", "--set", "token_buffer.depth_entries=0"], "token_buffer.depth_entries"),
    (lambda t: ["run", "--set", "pruning.threshold_per_head=[1,2]"],
     r"pruning.threshold_per_head: expected 12 values \(one per head of the trace\), got 2"),
    (lambda t: ["trace", "synth", "--workload", "no-such-model", "--out", str(t / "x.npz")], "no-such-model"),
    (lambda t: ["trace", "info", str(t)], r"missing \w\.npy \(a trace directory holds"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, make_args, message):
    proc = run_cli(*make_args(tmp_path))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("soc: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(message, lines[0]), lines[0]


def test_trace_synth_then_info_then_run(tmp_path):
    out = tmp_path / "t.npz"
    assert run_cli("trace", "synth", "--workload", "bert-base", "--seq-len", "128", "--layers", "2",
                   "--out", str(out)).returncode == 0
    info = json.loads(run_cli("trace", "info", str(out)).stdout)
    assert info["meta"]["layers"] == 2 and info["meta"]["seq_len"] == 128
    proc = run_cli("run", "--trace", str(out), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr


def test_existing_outputs_are_never_replaced_silently(tmp_path):
    out = tmp_path / "t.npz"
    args = ["trace", "synth", "--workload", "minilm-l6", "--seq-len", "64", "--layers", "1", "--out", str(out)]
    assert run_cli(*args).returncode == 0
    before = out.read_bytes()
    refused = run_cli(*args, "--seed", "5")
    assert refused.returncode == 2 and "exists; pass --force" in refused.stderr
    assert out.read_bytes() == before
    assert run_cli(*args, "--seed", "5", "--force").returncode == 0 and out.read_bytes() != before
    first = run_cli("run", "--trace", str(out), "--out", str(tmp_path / "o"))
    again = run_cli("run", "--trace", str(out), "--out", str(tmp_path / "o"))
    assert "replacing" not in first.stderr and f"replacing {tmp_path / 'o' / 'report.json'}" in again.stderr


def test_a_stall_is_detected_and_names_who_waits(paper_cfg, small_trace, monkeypatch):
    """If the fetch stage died early, the digital processor would wait forever: the run must say so."""
    from soc import simulate
    from soc.system import System

    original = System._fetch_stage

    def broken_fetch(self, i, n, ready):
        yield from original(self, i, n - 1, ready)  # loses the last tile

    monkeypatch.setattr(System, "_fetch_stage", broken_fetch)
    with pytest.raises(SimulationStalled, match=r"digital0 waits for K/V buffer \(empty\)"):
        simulate(paper_cfg, small_trace)


def test_version_and_every_option_has_help_with_its_default_or_is_required():
    import argparse

    import soc
    from soc.faces.cli import _load_extras, build_parser

    assert run_cli("--version").stdout.strip() == f"soc {soc.__version__}"
    _load_extras()
    missing = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")
                continue
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or not action.option_strings:
                continue
            text = action.help or ""
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if not text or not (flag or action.required or "default" in text or "required" in text
                                or action.choices):
                missing.append(f"{name} {action.option_strings[0]}")
    walk(build_parser(), "soc")
    assert not missing, missing


def test_bundled_names_work_from_any_directory(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env_run = lambda *a: subprocess.run([sys.executable, "-m", "soc", *a], cwd=elsewhere, capture_output=True,  # noqa: E731
                                        text=True, timeout=300, env={**__import__("os").environ,
                                                                     "PYTHONPATH": str(ROOT)})
    for args in (["run", "--config", "dense-digital", "--trace", "synth-tiny", "--out", "a"],
                 ["run", "--config", "configs/hybrid65nm.yaml", "--trace", "traces/synth-tiny.npz", "--out", "b"]):
        proc = env_run(*args)
        assert proc.returncode == 0, proc.stderr
        report = json.loads((elsewhere / args[-1] / "report.json").read_text())
        assert report["workload"]["seq_len"] == 64 and report["config"]["name"] in ("dense-digital", "hybrid65nm")
    info = env_run("trace", "info", "minilm-l6-lighthouse")
    assert info.returncode == 0 and json.loads(info.stdout)["meta"]["tokens"] == 207
    # token ids on one line, not one per line
    assert sum(1 for line in info.stdout.splitlines() if line.strip().rstrip(",").isdigit()) == 0
    paper = env_run("paper", "--no-baselines")
    assert paper.returncode == 0, paper.stderr
    from soc.sweep import load_sweep
    assert load_sweep("paper-pruning").base == str(ROOT / "configs" / "hybrid65nm.yaml")


def test_header_flags_synthetic_and_decode_traces(tmp_path):
    from soc.faces.report import _workload_text, fmt_bytes

    out = tmp_path / "d.npz"
    assert main(["trace", "synth", "--workload", "smollm2-135m", "--mode", "decode", "--prompt", "64",
                 "--generate", "16", "--layers", "1", "--out", str(out)]) == 0
    assert main(["run", "--trace", str(out), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert _workload_text(report["workload"]).startswith(
        "synthetic smollm2-135m (1 layer x 9 heads, decode: 64 prompt + 16 generated tokens")
    assert [fmt_bytes(n) for n in (6_279_296, 999, 13_600_000, 2.5e9)] == ["6.28 MB", "999 B", "13.6 MB", "2.50 GB"]
