"""Plots: real PNGs with content, and the numbers behind them checked against independent calculations."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from soc.errors import SocError
from soc.recorder import Recorder
from soc.simulate import simulate
from soc.timeline import TimelineFilter, TimelineSink, build_timeline

pytest.importorskip("matplotlib")

from soc.faces.plots import default_window, kept_by_layer_head, write_plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(paper_cfg, causal_trace):
    sink = TimelineSink(TimelineFilter())
    result = simulate(paper_cfg, causal_trace, recorder=Recorder(sink), keep_masks=True)
    return result, build_timeline(sink, result)


def test_every_plot_is_a_png_with_something_drawn(run, tmp_path):
    import matplotlib.image as mpimg

    result, tl = run
    written = write_plots(tmp_path, result, tl)
    assert {p.name for p in written} == {"utilization.png", "kept_fraction.png", "gantt.png",
                                         "token_buffer.png", "dram_energy.png"}
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(path)
        assert img.shape[0] > 200 and img.shape[1] > 400, path.name
        assert img[..., :3].std() > 0.05, f"{path.name} looks blank"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no leftovers


def test_kept_fraction_per_layer_and_head_equals_the_masks(run, causal_trace):
    result, _ = run
    m = causal_trace.meta
    frac = kept_by_layer_head(result.functional.chunks, m.layers, m.heads)
    seq_q, seq_k = causal_trace.q.shape[2], m.seq_len
    valid = np.tril(np.ones((seq_q, seq_k), dtype=bool), k=seq_k - seq_q + m.query_offset) if m.causal \
        else np.ones((seq_q, seq_k), dtype=bool)
    for layer, mask in enumerate(result.functional.masks):
        expect = (mask & valid).sum(axis=(1, 2)) / valid.sum()
        assert frac[layer] == pytest.approx(expect, abs=1e-12)
    # the heads' average, weighted by valid pairs (equal per head), is the report's figure
    assert frac.mean() == pytest.approx(result.report["pruning"]["kept_fraction"], rel=1e-9)


def test_default_gantt_window_shows_about_eight_digital_jobs(run):
    _, tl = run
    lo, hi = default_window(tl)
    assert tl.range_ns[0] <= lo < hi <= tl.range_ns[1]
    dig = tl.track == tl.tracks.index("digital0")
    starts = tl.start_ns[dig & (tl.start_ns >= lo) & (tl.start_ns <= hi)]
    assert 6 <= len(starts) <= 10


def test_missing_matplotlib_is_a_one_line_error(monkeypatch):
    from soc.faces.plots import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SocError, match=r"pip install -e '\.\[plots\]'"):
        require_matplotlib()


def test_cli_run_with_plots_writes_them(tmp_path, capsys):
    from soc.faces.cli import main
    from soc.trace import save_trace, synth_trace

    tiny = synth_trace("minilm-l6", seq_len=128, layers=1, seed=3)
    trace = save_trace(tmp_path / "t.npz", tiny.q, tiny.k, tiny.v, tiny.meta)
    out, plots = str(tmp_path / "o"), str(tmp_path / "p")
    assert main(["run", "--trace", str(trace), "--out", out, "--plots", plots]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 5
    assert "plots" in capsys.readouterr().out
