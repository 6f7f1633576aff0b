"""The design-space view of a sweep: energy against latency, coloured by accuracy, with the Pareto front.

A design point is Pareto-optimal when no other point of the same trace is at least as fast, as frugal and as
accurate, and strictly better in one of the three: those are the points worth choosing between. matplotlib is
imported only here and only when a plot is drawn (the ``plots`` extra); without it the sweep still completes
and says that the figure was skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Mapping, Sequence

import numpy as np

from soc.io import atomic_open

MARKERS = "osD^v<>pPX*h"


def pareto_mask(objectives: np.ndarray) -> np.ndarray:
    """Rows of ``objectives`` (n points x k objectives, all minimised) that no other row dominates: another
    row dominates when it is <= in every objective and < in one. Pairwise, vectorized in blocks of rows."""
    obj = np.asarray(objectives, dtype=float)
    if obj.ndim != 2:
        raise ValueError(f"pareto_mask: expected an (points, objectives) array, got shape {obj.shape}")
    n = obj.shape[0]
    dominated = np.zeros(n, bool)
    block = max(1, 2**22 // max(1, n * obj.shape[1]))  # bounds the (block, n, k) temporaries to ~4M cells
    for lo in range(0, n, block):
        mine = obj[lo:lo + block, None, :]  # (b, 1, k) against all (1, n, k)
        le = np.all(obj[None] <= mine, axis=2)
        lt = np.any(obj[None] < mine, axis=2)
        dominated[lo:lo + block] = np.any(le & lt, axis=1)
    return ~dominated


def _floats(rows: Sequence[Mapping[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows])


def _short(trace_key: str) -> str:
    return trace_key if trace_key.startswith("synth:") else Path(trace_key).name


FIXED_COLUMNS = frozenset({"id", "trace", "seed", "replicate", "status", "error"})


def design_label(row: Mapping[str, str], factor_keys: Sequence[str]) -> str:
    """The design values of a point, short: ``target_kept_fraction=0.25, q_tile_rows=32``."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in factor_keys if row.get(k) not in (None, ""))


def plot_pareto(rows: Sequence[Mapping[str, str]], path: str | Path, *, title: str = "sweep",
                warn: IO[str] | None = None, factor_keys: Sequence[str] | None = None) -> Path | None:
    """``factor_keys``: the columns that name a point's design (default: the columns before ``trace``); the
    Pareto-optimal points are labelled with their values."""
    """Draw ``results.csv`` rows (strings, as read back) into ``path``; None when there is nothing to draw or
    matplotlib is missing."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("latency_ns") and r.get("energy_j")]
    if not ok:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        if warn is not None:
            warn.write(f"sweep: {path} skipped: matplotlib is not installed "
                       "(pip install -e '.[plots]' in the soc checkout)\n")
        return None
    if factor_keys is None:
        cols = list(ok[0])
        factor_keys = cols[1:cols.index("trace")] if "trace" in cols else []
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
    handles = []
    for i, name in enumerate(traces):
        sel = np.array([r["trace"] == name for r in ok])
        marker = MARKERS[i % len(MARKERS)]
        sc = ax.scatter(lat_us[sel], en_uj[sel], c=err[sel], cmap="viridis_r", vmin=vmin,
                        vmax=max(vmax, vmin + 1e-12), marker=marker, s=36, edgecolors="none")
        acc = np.where(np.isfinite(err[sel]), err[sel], np.inf)
        front = pareto_mask(np.column_stack([lat_us[sel], en_uj[sel], acc]))
        ax.scatter(lat_us[sel][front], en_uj[sel][front], marker=marker, s=90, facecolors="none",
                   edgecolors="black", linewidths=0.8)
        chosen = [r for r, on in zip((r for r, s in zip(ok, sel, strict=True) if s), front, strict=True) if on]
        if len(chosen) <= 12:  # more labels than that cover the data they name
            for r, x, y in zip(chosen, lat_us[sel][front], en_uj[sel][front], strict=True):
                ax.annotate(design_label(r, factor_keys), (x, y), xytext=(4, 4), textcoords="offset points",
                            fontsize=6, color="0.2")
        handles.append(Line2D([], [], marker=marker, color="0.35", ls="", label=_short(name)))
    cbar = fig.colorbar(sc, ax=ax)
    cbar.set_label("output relative error vs exact attention (lower is better)")
    ax.set_xlabel("latency (µs)")
    ax.set_ylabel("energy (µJ)")
    failed = sum(r.get("status") != "ok" for r in rows)
    ax.set_title(f"{title}: {len(ok)} points" + (f", {failed} failed" if failed else "")
                 + " (outlined: Pareto-optimal in latency, energy and error, per trace)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    target = Path(path)
    with atomic_open(target, "wb") as handle:
        fig.savefig(handle, format="png")
    return target
