"""`soc calibrate`: per-layer margins that meet their targets when the calibrated config is simulated."""

from __future__ import annotations

import pytest

from soc.calibrate import calibrate_margins
from soc.cli import main
from soc.config import load_config
from soc.simulate import simulate


def test_margins_meet_a_kept_fraction_target_per_layer(paper_cfg, small_trace):
    rows = calibrate_margins(paper_cfg, small_trace, target_kept=0.3)
    assert [r["layer"] for r in rows] == list(range(small_trace.meta.layers))
    for r in rows:
        assert r["kept_fraction"] == pytest.approx(0.3, abs=0.02)


def test_accuracy_target_is_met_and_tighter_targets_need_wider_margins(paper_cfg, small_trace):
    loose = calibrate_margins(paper_cfg, small_trace, target_mass=0.8)
    tight = calibrate_margins(paper_cfg, small_trace, target_mass=0.95)
    for lo, hi in zip(loose, tight):
        assert lo["mass_kept"] >= 0.8 - 1e-6 and hi["mass_kept"] >= 0.95 - 1e-6
        assert hi["margin"] >= lo["margin"] and hi["kept_fraction"] >= lo["kept_fraction"]


def test_calibrated_config_reproduces_the_target_in_a_run(tmp_path, small_trace):
    from soc.trace import save_trace

    trace_path = save_trace(tmp_path / "t.npz", small_trace.q, small_trace.k, small_trace.v, small_trace.meta)
    out = tmp_path / "cal" / "calibrated.yaml"
    assert main(["calibrate", "--trace", str(trace_path), "--target-kept", "0.2", "--out", str(out)]) == 0
    cfg = load_config(out)  # extends the base through a relative path
    assert cfg.pruning.rule == "margin" and len(cfg.pruning.per_layer) == small_trace.meta.layers
    r = simulate(cfg, small_trace).report
    assert r["pruning"]["kept_fraction"] == pytest.approx(0.2, abs=0.02)
    for layer in r["pruning"]["per_layer"]:
        assert layer["rule"] == "margin"
