"""The design-space view of a sweep: energy against latency, coloured by accuracy, with the Pareto front.

A design point is Pareto-optimal when no other point of the same trace is at least as fast and at least as
frugal and strictly better in one of the two. matplotlib is imported only here and only when a plot is drawn
(the ``plots`` extra); without it the sweep still completes and says that the figure was skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Mapping, Sequence

import numpy as np

from soc.io import atomic_open

MARKERS = "osD^v<>pPX*h"


def pareto_mask(latency: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """True where no other point has latency <= and energy <= with one of them strictly smaller.

    Sort by (latency, energy); a point is dominated iff a point of strictly smaller latency has energy <= its
    own, or a point of equal latency has strictly smaller energy (the first of its latency group)."""
    lat = np.asarray(latency, dtype=float)
    en = np.asarray(energy, dtype=float)
    if lat.shape != en.shape or lat.ndim != 1:
        raise ValueError(f"pareto_mask: latency and energy must be 1-D of one length, got {lat.shape}, {en.shape}")
    if lat.size == 0:
        return np.zeros(0, bool)
    order = np.lexsort((en, lat))
    ls, es = lat[order], en[order]
    _, start, group = np.unique(ls, return_index=True, return_inverse=True)
    running = np.minimum.accumulate(es)
    before = np.concatenate([[np.inf], running])[start]  # min energy over strictly smaller latencies
    dominated = (before[group] <= es) | (es[start][group] < es)
    mask = np.empty(lat.size, bool)
    mask[order] = ~dominated
    return mask


def _floats(rows: Sequence[Mapping[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows])


def plot_pareto(rows: Sequence[Mapping[str, str]], path: str | Path, *, title: str = "sweep",
                warn: IO[str] | None = None) -> Path | None:
    """Draw ``results.csv`` rows (strings, as read back) into ``path``; None when there is nothing to draw or
    matplotlib is missing."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("latency_ns") and r.get("energy_j")]
    if not ok:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if warn is not None:
            warn.write(f"sweep: {path} skipped: matplotlib is not installed (pip install 'soc[plots]')\n")
        return None
    lat_us = _floats(ok, "latency_ns") * 1e-3
    en_uj = _floats(ok, "energy_j") * 1e6
    err = _floats(ok, "output_rel_err")
    traces = sorted({r["trace"] for r in ok})
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = err[np.isfinite(err)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    sc = None
    for i, name in enumerate(traces):
        sel = np.array([r["trace"] == name for r in ok])
        front = pareto_mask(lat_us[sel], en_uj[sel])
        sc = ax.scatter(lat_us[sel], en_uj[sel], c=err[sel], cmap="viridis_r", vmin=vmin, vmax=max(vmax, vmin + 1e-12),
                        marker=MARKERS[i % len(MARKERS)], s=36, edgecolors="none", label=name)
        order = np.argsort(lat_us[sel][front])
        ax.step(lat_us[sel][front][order], en_uj[sel][front][order], where="post", color="0.3", lw=1.0,
                alpha=0.8)
        ax.scatter(lat_us[sel][front], en_uj[sel][front], marker=MARKERS[i % len(MARKERS)], s=90,
                   facecolors="none", edgecolors="black", linewidths=0.8)
    cbar = fig.colorbar(sc, ax=ax)
    cbar.set_label("output relative error vs exact attention (lower is better)")
    ax.set_xlabel("latency (µs)")
    ax.set_ylabel("energy (µJ)")
    failed = sum(r.get("status") != "ok" for r in rows)
    ax.set_title(f"{title}: {len(ok)} points" + (f", {failed} failed" if failed else "")
                 + " (outlined: Pareto front per trace)", fontsize=9)
    ax.grid(True, alpha=0.3)
    if len(traces) > 1:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    target = Path(path)
    with atomic_open(target, "wb") as handle:
        fig.savefig(handle, format="png")
    return target
