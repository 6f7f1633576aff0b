"""`soc calibrate`: per-layer margins that meet their targets when the calibrated config is simulated."""

from __future__ import annotations

import pytest

from soc.faces.calibrate import calibrate_margins
from soc.faces.cli import main
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


# ------------------------------------------------------------------------------------ held-out calibration
def _run(cfg, trace, **kw):
    return simulate(cfg, trace, model_accuracy=False, **kw).report


def test_held_out_threshold_misses_the_target_on_the_evaluated_trace(paper_cfg):
    """Thresholds taken from another text of the same model: the evaluated trace no longer keeps exactly the
    target, while the calibration trace itself does (so the references really came from it)."""
    from soc.simulate import calibration_trace_path
    from soc.trace import load_trace

    evaluated = load_trace(calibration_trace_path("minilm-l6-lighthouse"))
    held_out = load_trace(calibration_trace_path("minilm-l6-orchard"))
    assert evaluated.meta.text_sha256 != held_out.meta.text_sha256
    target = paper_cfg.pruning.target_kept_fraction
    own = _run(paper_cfg, evaluated)
    assert own["pruning"]["kept_fraction"] == pytest.approx(target, abs=2e-3)
    cfg = load_config("configs/hybrid65nm.yaml", ["pruning.calibration_trace=minilm-l6-orchard"])
    cross = _run(cfg, evaluated)
    assert all(layer["calibrated_on"] == "calibration trace" for layer in cross["pruning"]["per_layer"])
    per_layer = [layer["kept_fraction"] for layer in cross["pruning"]["per_layer"]]
    assert max(abs(k - target) for k in per_layer) > 0.02      # off target layer by layer on the held-out text
    # the same references replayed on the calibration trace hit the target in every layer
    back = _run(cfg, held_out)
    for layer in back["pruning"]["per_layer"]:
        assert layer["kept_fraction"] == pytest.approx(target, abs=3e-3)


def test_calibrate_threshold_rule_writes_fixed_references_that_transfer(paper_cfg, tmp_path):
    from soc.faces.calibrate import calibrate_thresholds, evaluate_rows
    from soc.simulate import calibration_trace_path
    from soc.trace import load_trace

    cal = load_trace(calibration_trace_path("minilm-l6-orchard"))
    rows = calibrate_thresholds(paper_cfg, cal, target_kept=0.3)
    assert all(r["kept_fraction"] == pytest.approx(0.3, abs=3e-3) and len(r["thresholds"]) == 12 for r in rows)
    again = evaluate_rows(paper_cfg, rows, cal)        # fixed references reproduce the calibration run
    for r, e in zip(rows, again):
        assert e["kept_fraction"] == pytest.approx(r["kept_fraction"], abs=2e-3)
    other = evaluate_rows(paper_cfg, rows, load_trace(calibration_trace_path("minilm-l6-lighthouse")))
    assert max(abs(e["kept_fraction"] - 0.3) for e in other) > 0.02
    out = tmp_path / "thr.yaml"
    assert main(["calibrate", "--trace", "minilm-l6-orchard", "--rule", "threshold", "--target-kept", "0.3",
                 "--evaluate", "minilm-l6-lighthouse", "--out", str(out)]) == 0
    text = out.read_text()
    assert "held out, on minilm-l6-lighthouse" in text and "threshold_per_head" in text
    assert load_config(out).pruning.per_layer[0].threshold_per_head == tuple(rows[0]["thresholds"])
