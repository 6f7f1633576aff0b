"""PNG figures of a run (matplotlib, the optional ``[plots]`` extra, imported only when a plot is drawn).

- ``gantt.png``: which port works on what in a short time window (one row per CIM array, MAC array, SRAM bank,
  DRAM channel, link direction), coloured by activity, so overlap of scoring, K/V fetch and exact attention
  is visible;
- ``utilization.png``: busy fraction of every block and port over the run;
- ``token_buffer.png``: token-buffer occupancy over time against its depth (back-pressure when full, a
  starving digital side when empty);
- ``kept_fraction.png``: the fraction of (query, key) pairs the CIM kept, per layer and head;
- ``dram_energy.png``: DRAM bandwidth and cumulative energy over time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from soc.errors import SocError
from soc.io import atomic_open


def require_matplotlib() -> Any:
    """pyplot on the non-interactive Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SocError("--plots needs matplotlib: pip install -e '.[plots]' in the soc checkout") from None
    return plt


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    require_matplotlib().close(fig)
    return path


def default_window(tl) -> tuple[float, float]:
    """A window of about eight digital jobs near the middle of the recorded range, in steady state."""
    from soc.timeline.model import FLOW_TO, tile_spans

    lo, hi = tl.range_ns
    att = np.flatnonzero(tile_spans(FLOW_TO, tl.track, tl.tracks, tl.label, tl.labels))
    if len(att) >= 3:
        starts = np.sort(tl.start_ns[att])
        period = float(np.median(np.diff(starts)))
        if period > 0:
            # steady state: of the windows of 8 periods holding the most jobs (a layer barrier's pipeline fill
            # holds fewer), the one nearest the middle of the run
            held = np.searchsorted(starts, starts + 8 * period) - np.arange(len(starts))
            best = np.flatnonzero(held >= held.max() - 1)
            first = best[np.argmin(np.abs(starts[best] - (lo + hi) / 2))]
            a = starts[first] - 0.1 * period  # a little lead-in shows what feeds the first job
            return max(lo, a), min(hi, a + 8 * period)
    return lo, lo + (hi - lo) / 50 if hi > lo else lo + 1.0


# distinct hues first (tab20 pairs a dark and a light shade of one hue: neighbours looked alike)
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#000000", "#ffd700", "#00ff7f", "#8b0000", "#4682b4", "#ff1493")


def _merge_identical(tl, rows: list[str], inside: np.ndarray) -> list[tuple[str, int]]:
    """(row label, track index), with the rows of one block whose spans are identical merged into one (eight
    SRAM banks striped alike: `sram.bank0 .. sram.bank7 (8 identical)`)."""
    groups: dict[tuple[str, bytes], list[str]] = {}
    for name in rows:
        sel = inside & (tl.track == tl.tracks.index(name))
        spans = np.concatenate([tl.start_ns[sel], tl.end_ns[sel], tl.label[sel].astype(float)]).tobytes()
        groups.setdefault((name.split(".", 1)[0], spans), []).append(name)
    out = []
    for names in groups.values():
        label = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} identical)"
        out.append((label, tl.tracks.index(names[0])))
    return out


def plot_gantt(tl, path: str | os.PathLike[str], window_ns: tuple[float, float] | None = None) -> Path:
    plt = require_matplotlib()
    lo, hi = window_ns or default_window(tl)
    inside = (tl.end_ns >= lo) & (tl.start_ns <= hi)
    merged = _merge_identical(tl, [t for i, t in enumerate(tl.tracks) if (inside & (tl.track == i)).any()], inside)
    rows = [label for label, _ in merged]
    colours = {lab: _PALETTE[i % len(_PALETTE)] for i, lab in enumerate(tl.labels)}
    fig, ax = plt.subplots(figsize=(12, 0.38 * len(rows) + 1.6))
    for r, (name, track) in enumerate(reversed(merged)):
        sel = inside & (tl.track == track)
        s, e, lab = tl.start_ns[sel], tl.end_ns[sel], tl.label[sel]
        for li in np.unique(lab):
            m = lab == li
            ax.broken_barh(list(zip((s[m] - lo) / 1e3, (e[m] - s[m]) / 1e3, strict=True)), (r - 0.4, 0.8),
                           facecolors=colours[tl.labels[li]], edgecolor="none")
    ax.set_yticks(range(len(rows)), list(reversed(rows)), fontsize=8)
    ax.set_xlim(0, (hi - lo) / 1e3)
    ax.set_xlabel(f"simulated time in the window (us; the window starts {lo / 1e3:,.2f} us into the run)")
    present = sorted({tl.labels[i] for i in np.unique(tl.label[inside])})
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[lab]) for lab in present]
    ax.legend(handles, present, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="activity")
    ax.set_title("What each port does (one row per CIM array, MAC array, SRAM bank, DRAM channel, link)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, Path(path))


def plot_utilization(report: dict, path: str | os.PathLike[str]) -> Path:
    plt = require_matplotlib()
    from soc.timeline.model import track_order

    lat = report["time"]["latency_ns"]
    util = {k.removeprefix("link "): v for k, v in report["utilization_by_instance"].items()}
    for name, busy in report["time"]["busy_ns"].items():
        util.setdefault(name, busy / lat if lat > 0 else 0.0)
    names = track_order(list(util))
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(names) + 1.4))
    vals = [util[n] for n in names]
    ax.barh(range(len(names)), vals, color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("busy fraction of the run")
    for i, v in enumerate(vals):
        ax.text(min(v, 0.9) + 0.01, i, f"{v:.0%}", va="center", fontsize=7)
    ax.set_title(f"Utilization over {lat / 1e3:,.1f} us ({report['config']['name']})")
    return _save(fig, Path(path))


def plot_occupancy(tl, report: dict, path: str | os.PathLike[str]) -> Path:
    plt = require_matplotlib()
    depth = report["config"]["token_buffer"]["depth_entries"]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for c in tl.counters:
        if c.name.endswith(".occupancy") and len(c.t_ns):
            t = np.append(c.t_ns, tl.range_ns[1]) / 1e3
            v = np.append(c.value, c.value[-1])
            ax.step(t, v, where="post", lw=0.8, label=c.name)
    ax.axhline(depth, color="tab:red", ls="--", lw=1, label=f"depth ({depth} entries)")
    mean = report["utilization"].get("token_buffer")
    if mean is not None:
        ax.axhline(mean * depth, color="tab:gray", ls=":", lw=1, label=f"run mean ({mean * depth:.2f})")
    ax.set_ylim(-0.3, depth + 0.8)
    ax.set_xlabel("time (us)")
    ax.set_ylabel("entries")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: the data fill the axes
    ax.set_title("Token buffer occupancy: full = CIM waits (back-pressure); empty = digital side starves")
    return _save(fig, Path(path))


def kept_by_layer_head(chunks: dict[str, np.ndarray], layers: int, heads: int) -> np.ndarray:
    """Kept / valid (query, key) pairs per (layer, head), from the functional layer's per-tile counts."""
    idx = chunks["layer"].astype(np.int64) * heads + chunks["head"].astype(np.int64)
    kept = np.bincount(idx, weights=chunks["pairs_kept"], minlength=layers * heads)
    valid = np.bincount(idx, weights=chunks["pairs_valid"], minlength=layers * heads)
    return np.divide(kept, valid, out=np.full_like(kept, np.nan), where=valid > 0).reshape(layers, heads)


def plot_kept_heatmap(result, path: str | os.PathLike[str]) -> Path:
    plt = require_matplotlib()
    w = result.report["workload"]
    frac = kept_by_layer_head(result.functional.chunks, w["layers"], w["heads"])
    fig, ax = plt.subplots(figsize=(0.45 * w["heads"] + 2.5, 0.4 * w["layers"] + 1.8))
    im = ax.imshow(frac, cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(frac))), aspect="auto")
    if frac.size <= 400:
        for (i, j), v in np.ndenumerate(frac):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if v < 0.6 * np.nanmax(frac) else "black")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(w["heads"]))
    ax.set_yticks(range(w["layers"]))
    fig.colorbar(im, ax=ax, label="kept fraction of pairs")
    title = (f"Kept by the CIM: {result.report['pruning']['kept_fraction']:.1%} of pairs overall "
             f"(rule {result.report['pruning']['rule']})")
    if np.isfinite(frac).any() and float(np.nanmax(frac) - np.nanmin(frac)) < 0.02:
        title += ("\nflat: this rule is calibrated to one kept fraction in every layer and head; "
                  "--set pruning.rule=margin shows how layers differ")
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))


def plot_dram_energy(tl, path: str | os.PathLike[str], peak_gb_per_s: float | None = None) -> Path | None:
    plt = require_matplotlib()
    bw = [c for c in tl.counters if c.name.endswith(".bandwidth")]
    energy = [c for c in tl.counters if c.name == "energy.cumulative"]
    if not bw and not energy:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for c in bw:
        ax.step(c.t_ns / 1e3, c.value, where="post", lw=0.8, label=f"{c.name} (GB/s)")
    if peak_gb_per_s:
        ax.axhline(peak_gb_per_s, color="tab:red", ls="--", lw=1, label=f"peak {peak_gb_per_s:g} GB/s")
    ax.set_xlabel("time (us)")
    ax.set_ylabel("GB/s")
    if energy:
        ax2 = ax.twinx()
        ax2.plot(energy[0].t_ns / 1e3, energy[0].value, color="tab:orange", label="cumulative energy (uJ)")
        ax2.set_ylabel("uJ")
        ax2.legend(loc="upper left", bbox_to_anchor=(1.08, 0.75), fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8)  # outside the axes: no data hidden
    ax.set_title("DRAM bandwidth and cumulative energy")
    return _save(fig, Path(path))


def write_plots(out_dir: str | os.PathLike[str], result, tl=None,
                window_ns: tuple[float, float] | None = None) -> list[Path]:
    """Every plot into ``out_dir``; ``tl`` (a Timeline) adds the Gantt, occupancy and DRAM/energy plots."""
    out = Path(out_dir)
    written = [plot_utilization(result.report, out / "utilization.png"),
               plot_kept_heatmap(result, out / "kept_fraction.png")]
    if tl is not None:
        written.append(plot_gantt(tl, out / "gantt.png", window_ns))
        written.append(plot_occupancy(tl, result.report, out / "token_buffer.png"))
        extra = plot_dram_energy(tl, out / "dram_energy.png",
                                 peak_gb_per_s=result.report["config"].get("dram", {}).get("bandwidth_gb_per_s"))
        if extra is not None:
            written.append(extra)
    return written
