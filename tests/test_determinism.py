"""Reproducible, atomic outputs: same inputs and seed -> the same bytes; a crash mid-write loses nothing.

- ``soc run`` twice with the same config, trace and seed writes byte-identical report.json (once the three
  wall-clock fields sim.wall_s, sim.sim_wall_s, sim.events_per_s are dropped) and byte-identical timelines
  (Chrome JSON and Perfetto); a timeline attached or not, the report is the same.
- The seed drives the thermal noise only: with ``cim.noise_fraction_fs=0`` two seeds give identical reports; with
  noise the keep masks differ (near the comparator threshold only) while every report key, list length and
  every noise-independent section (workload, config, the dense counterfactual) stays the same.
- report.json is written through a temporary sibling and a rename: a crash or an interrupt while writing leaves
  the previous report byte-for-byte intact and no temporary file behind; replacing a report is announced.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from soc.faces.cli import main
from soc.config import load_config
from soc.io import write_json
from soc.simulate import simulate
from soc.trace import load_trace

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "traces" / "synth-tiny.npz"
WALL_CLOCK = ("wall_s", "sim_wall_s", "events_per_s")


def run(out: Path, *extra: str) -> tuple[int, str, str]:
    """``soc run`` in-process on the tiny trace; (exit code, stdout, stderr)."""
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = main(["run", "--trace", str(TRACE), "--out", str(out), *extra])
    return code, so.getvalue(), se.getvalue()


def report_bytes(out: Path) -> bytes:
    """report.json re-serialised without the wall-clock fields, byte for byte otherwise."""
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in WALL_CLOCK:
        report["sim"].pop(key)
    return json.dumps(report, indent=2).encode()


def shape_of_tree(tree):
    """The report's skeleton: keys, list lengths and value types, without the numbers."""
    if isinstance(tree, dict):
        return {k: shape_of_tree(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [shape_of_tree(v) for v in tree]
    return "number" if isinstance(tree, (int, float)) and not isinstance(tree, bool) else type(tree).__name__


# --------------------------------------------------------------------------------------------- same seed
@pytest.mark.parametrize("timeline", ["t.json", "t.pftrace"])
def test_same_inputs_and_seed_give_identical_bytes(tmp_path, timeline):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        code, _, err = run(out, "--seed", "7", "--timeline", str(out / timeline))
        assert code == 0, err
    assert report_bytes(a) == report_bytes(b)
    assert (a / timeline).read_bytes() == (b / timeline).read_bytes()
    assert (a / timeline).stat().st_size > 10_000  # a real timeline, not an empty file
    raw_a = json.loads((a / "report.json").read_text())
    raw_b = json.loads((b / "report.json").read_text())
    assert set(raw_a["sim"]) - set(WALL_CLOCK) and raw_a["sim"]["events"] == raw_b["sim"]["events"]


def test_a_timeline_does_not_change_the_report(tmp_path):
    assert run(tmp_path / "plain", "--seed", "7")[0] == 0
    assert run(tmp_path / "traced", "--seed", "7", "--timeline", str(tmp_path / "t.json"))[0] == 0
    assert report_bytes(tmp_path / "plain") == report_bytes(tmp_path / "traced")


# --------------------------------------------------------------------------------------------- other seeds
def test_without_noise_the_seed_changes_nothing_but_its_record(tmp_path):
    for seed in ("1", "2"):
        assert run(tmp_path / seed, "--seed", seed, "--set", "cim.noise_fraction_fs=0")[0] == 0
    one, two = (json.loads(report_bytes(tmp_path / s)) for s in ("1", "2"))
    assert (one["config"].pop("seed"), two["config"].pop("seed")) == (1, 2)  # the report says which seed ran
    assert one == two


def test_with_noise_the_seed_changes_only_the_noisy_decisions():
    # on this 64-key trace the default 4 sink + 16 recent keys alone exceed the target: no comparator decision
    # would be left for the noise to move, so they are off here
    unforced = ["pruning.keep_sink_tokens=0", "pruning.keep_recent_tokens=0"]
    cfg = load_config(ROOT / "configs" / "hybrid65nm.yaml", unforced)
    trace = load_trace(TRACE)
    assert cfg.cim.noise_fraction_fs > 0
    r1 = simulate(cfg, trace, seed=1, keep_masks=True)
    r2 = simulate(cfg, trace, seed=2, keep_masks=True)
    quiet = simulate(load_config(ROOT / "configs" / "hybrid65nm.yaml", ["cim.noise_fraction_fs=0", *unforced]), trace,
                     seed=1, keep_masks=True)
    m1, m2, m0 = (np.stack(r.functional.masks) for r in (r1, r2, quiet))
    assert m1.shape == m2.shape == m0.shape
    flipped = (m1 != m2).mean()
    assert 0 < flipped < 0.1  # the noise moves decisions near the threshold, not the whole mask
    assert (m1 != m0).mean() < 0.1 and (m2 != m0).mean() < 0.1
    a, b = r1.report, r2.report
    assert shape_of_tree(a) == shape_of_tree(b)  # same keys, same list lengths, same types
    assert (a["config"].pop("seed"), b["config"].pop("seed")) == (1, 2)
    for section in ("workload", "config"):
        assert a[section] == b[section], section
    assert a["traffic"]["dense"] == b["traffic"]["dense"]  # the counterfactual has no analog stage
    assert a["pruning"]["kept_fraction"] == pytest.approx(b["pruning"]["kept_fraction"], abs=0.02)
    for result, masks in ((r1, m1), (r2, m2)):  # each run's counts come from its own masks
        assert int(result.functional.chunks["pairs_kept"].sum()) == int(masks.sum())
        assert result.report["pruning"]["kept_fraction"] == pytest.approx(masks.mean())  # non-causal trace


# --------------------------------------------------------------------------------------------- atomic writes
def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_a_crash_while_writing_keeps_the_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run(out, "--seed", "3")[0] == 0
    before = (out / "report.json").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", disk_full)
    code, _, err = run(out, "--seed", "4")
    lines = err.splitlines()
    assert code == 2 and lines == [f"soc: replacing {out / 'report.json'}",
                                   "soc: error: No space left on device"], err
    assert (out / "report.json").read_bytes() == before
    assert _leftovers(out) == []


def test_an_interrupt_while_writing_keeps_the_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run(out)[0] == 0
    before = (out / "report.json").read_bytes()
    real_dump = json.dump

    def interrupted(obj, fh, **kwargs):
        real_dump({"schema": obj["schema"]}, fh)  # half a report reaches the temporary file...
        fh.flush()
        raise KeyboardInterrupt  # ...then Ctrl-C

    monkeypatch.setattr(json, "dump", interrupted)
    code, _, err = run(out, "--seed", "5")
    assert code == 130 and err.splitlines()[-1] == "soc: interrupted"
    assert (out / "report.json").read_bytes() == before
    assert _leftovers(out) == []


def test_write_json_replaces_only_on_success(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    write_json(target, {"a": 1})
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(target, {"a": float("nan")})  # refused mid-serialisation
    assert json.loads(target.read_text()) == {"a": 1} and _leftovers(tmp_path) == []
    os.chmod(tmp_path, 0o755)
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not the temporary file's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_replacing_a_report_is_announced(tmp_path):
    code, _, err = run(tmp_path)
    assert code == 0 and "replacing" not in err
    code, _, err = run(tmp_path)
    assert code == 0 and err.splitlines() == [f"soc: replacing {tmp_path / 'report.json'}"]
