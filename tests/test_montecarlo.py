"""`soc montecarlo`: one chip instance per chip seed; the bands summarize exactly the per-chip values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soc.faces.cli import main
from soc.config import load_config
from soc.faces.montecarlo import band, monte_carlo


def test_band_is_the_percentiles_of_the_values():
    b = band([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (b["mean"], b["min"], b["max"]) == (4.0, 1.0, 10.0)
    assert b["p5"] == pytest.approx(1.2) and b["p95"] == pytest.approx(8.8)   # linear between order statistics


def test_chips_differ_by_their_fixed_pattern_and_agree_without_one(small_trace):
    cfg = load_config("configs/hybrid65nm.yaml", ["pruning.rule=margin", "pruning.margin=3",
                                                   "cim.noise_fraction_fs=0", "cim.offset_fraction_fs=0.01"])
    out = monte_carlo(cfg, small_trace, chips=3, first_chip=5, model_accuracy=False)
    assert [r["chip_seed"] for r in out["per_chip"]] == [5, 6, 7]
    kept = [r["kept_fraction"] for r in out["per_chip"]]
    assert len(set(kept)) == 3                                  # each chip's offsets move different keys
    b = out["bands"]["kept_fraction"]
    assert b["min"] == min(kept) and b["max"] == max(kept) and b["mean"] == pytest.approx(np.mean(kept))
    assert "embedding_cosine" not in out["bands"]               # no model re-run was asked for
    ideal = load_config("configs/hybrid65nm.yaml", ["pruning.rule=margin", "pruning.margin=3",
                                                     "cim.noise_fraction_fs=0", "cim.offset_fraction_fs=0",
                                                     "cim.gain_sigma_fraction=0"])
    same = monte_carlo(ideal, small_trace, chips=2, model_accuracy=False)["per_chip"]
    assert same[0]["kept_fraction"] == same[1]["kept_fraction"]  # an ideal array: every chip alike


def test_cli_writes_the_bands(tmp_path, small_trace):
    from soc.trace import save_trace

    path = save_trace(tmp_path / "t.npz", small_trace.q, small_trace.k, small_trace.v, small_trace.meta)
    out = tmp_path / "mc.json"
    assert main(["montecarlo", "--trace", str(path), "--chips", "2", "--no-model", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["chips"] == 2 and len(data["per_chip"]) == 2 and "kept_fraction" in data["bands"]
    assert [r["chip_seed"] for r in data["per_chip"]] == [0, 1]
    kept = [r["kept_fraction"] for r in data["per_chip"]]
    band = data["bands"]["kept_fraction"]
    assert (band["min"], band["max"]) == (min(kept), max(kept))
    assert band["mean"] == pytest.approx(sum(kept) / 2)
    assert min(kept) <= band["p5"] <= band["p95"] <= max(kept)
    with pytest.raises(SystemExit) as refused:  # argparse refuses it: one line, exit 2
        main(["montecarlo", "--trace", str(path), "--chips", "0", "--no-model"])
    assert refused.value.code == 2
