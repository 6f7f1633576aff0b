"""`soc compare CONFIG... --trace T --out DIR`: several SoC configs on one trace, side by side.

Writes ``compare.csv`` (one row per config, stable column names with units), ``compare.md`` (the same as a
readable table) and ``compare.png`` (latency, energy split, DRAM and SRAM bytes, row-buffer hit rate,
utilization; matplotlib is imported only here, and only when the figure is drawn).

Configs that differ only in hardware the functional pass does not see (memories, interconnect, clocks) share
one functional pass: the masks depend on the trace, the pruning rule, the CIM quantization, the tiles and the
seed, so those form the cache key and the expensive numpy work runs once per distinct key.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from soc.faces.args import extra_command

#: Per-block energy columns, in this order when present.
ENERGY_GROUPS = ("cim", "token_buffer", "digital", "sram", "interconnect", "dram", "other")
UTIL_GROUPS = ("cim", "digital", "token_buffer", "sram", "dram", "links")


# --- running ------------------------------------------------------------------------------------------------
def _functional_key(cfg, key_tile: int, seed: int | None) -> tuple:
    from soc.simulate import pruning_spec

    return (pruning_spec(cfg), cfg.dataflow.q_tile_rows, key_tile, cfg.seed if seed is None else seed,
            cfg.pruning.calibration_trace)


def run_configs(cfgs: Sequence[Any], trace, *, seed: int | None = None, progress=None) -> list:
    """Simulate every config on ``trace``; configs with the same functional key reuse one functional pass."""
    from soc.dataflow import key_tile_keys
    from soc.simulate import shape_of, simulate

    shape = shape_of(trace)
    done: dict[tuple, Any] = {}
    results = []
    for i, cfg in enumerate(cfgs):
        key = _functional_key(cfg, key_tile_keys(cfg, shape.head_dim), seed)
        res = simulate(cfg, trace, seed=seed, functional=done.get(key))
        done.setdefault(key, res.functional)
        results.append(res)
        if progress is not None:
            progress(i, cfg, res)
    return results


def memory_stats(res) -> dict[str, Any]:
    """The DRAM block's extra statistics (row buffers), as the run collected them into the report."""
    return res.report["memory"].get("dram", {})


def _label(cfg, path: str | None, taken: set[str]) -> str:
    name = cfg.name
    if name in taken and path:
        name = f"{name} ({Path(path).stem})"
    while name in taken:
        name += "'"
    taken.add(name)
    return name


def rows(results, paths: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """One flat row per result; every column carries its unit."""
    paths = list(paths) if paths is not None else [None] * len(results)
    taken: set[str] = set()
    out = []
    for res, path in zip(results, paths):
        r, cfg = res.report, res.config
        t, e, u = r["traffic"], r["energy"], r["utilization"]
        mem = memory_stats(res)
        # a DRAM model with a standard part says which (its own statistics); else the block model's name
        dram = f"{mem['standard']} x{mem.get('channels', '')}" if "standard" in mem else cfg.dram.kind
        row: dict[str, Any] = {
            "config": _label(cfg, path, taken), "dram": dram, "kv_placement": t.get("kv_placement"),
            "sram_kib": cfg.sram.capacity_bytes / 1024,
            "latency_us": r["time"]["latency_ns"] / 1e3,
            "effective_gops": r["throughput"]["effective_gops"],
            "kept_fraction": r["pruning"]["kept_fraction"],
            "energy_total_uj": e["total_j"] * 1e6, "energy_on_chip_uj": e["on_chip_j"] * 1e6,
        }
        for g in ENERGY_GROUPS:
            row[f"energy_{g}_uj"] = e["by_block"].get(g, 0.0) * 1e6
        dense = t["dense"]
        row.update({
            "dram_read_bytes": t["dram_read_bytes"], "dram_write_bytes": t["dram_write_bytes"],
            "sram_read_bytes": t["sram_read_bytes"], "sram_write_bytes": t["sram_write_bytes"],
            "dense_dram_bytes": dense["dram_read_bytes"] + dense["dram_write_bytes"],
            "dram_savings_vs_dense": t["savings"]["dram"],
            "dram_row_hit_rate": mem.get("row_hit_rate"),
            "dram_bandwidth_gb_per_s": mem.get("achieved_bandwidth_gb_per_s"),
        })
        for g in UTIL_GROUPS:
            row[f"util_{g}"] = u.get(g)
        row["wall_s"] = r["sim"]["wall_s"]
        out.append(row)
    return out


# --- writing ------------------------------------------------------------------------------------------------
def _csv_text(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    w.writeheader()
    for row in table:
        w.writerow({k: "" if v is None else f"{v:.12g}" if isinstance(v, float) else v
                    for k, v in row.items()})
    return buf.getvalue()


def _md_text(table: list[dict[str, Any]], trace_desc: str) -> str:
    f = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
    head = ["config", "DRAM", "SRAM KiB", "K/V", "latency us", "energy uJ (on chip)", "DRAM energy uJ",
            "DRAM MB", "SRAM MB", "DRAM vs dense", "row hits", "util cim/dig/sram/dram/links"]
    lines = [f"Trace: {trace_desc}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        util = "/".join(f(r[f"util_{g}"], ".0%") for g in ("cim", "digital", "sram", "dram", "links"))
        lines.append("| " + " | ".join([
            r["config"], r["dram"], f"{r['sram_kib']:.0f}", str(r["kv_placement"]), f"{r['latency_us']:,.1f}",
            f"{r['energy_total_uj']:,.1f} ({r['energy_on_chip_uj']:,.1f})", f"{r['energy_dram_uj']:,.1f}",
            f"{(r['dram_read_bytes'] + r['dram_write_bytes']) / 1e6:,.2f}",
            f"{(r['sram_read_bytes'] + r['sram_write_bytes']) / 1e6:,.2f}",
            f(r["dram_savings_vs_dense"], ".2f") + "x", f(r["dram_row_hit_rate"], ".1%"), util]) + " |")
    lines += ["", ("DRAM vs dense: the same SoC's DRAM bytes without pruning divided by these (from the same "
                   "masks); row hits: fraction of DRAM bursts that found their row open (banked DRAM only).")]
    return "\n".join(lines) + "\n"


def _plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from soc.io import atomic_open

    names = [r["config"] for r in table]
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    ax = axes[0, 0]
    ax.bar(x, [r["latency_us"] for r in table], color="#4477aa")
    ax.set_title("latency (us)")
    ax = axes[0, 1]
    bottom = np.zeros(len(table))
    for g in ENERGY_GROUPS:
        vals = np.array([r[f"energy_{g}_uj"] for r in table])
        if vals.any():
            ax.bar(x, vals, bottom=bottom, label=g)
            bottom += vals
    ax.set_title("energy by block (uJ)")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    w = 0.4
    ax.bar(x - w / 2, [(r["dram_read_bytes"] + r["dram_write_bytes"]) / 1e6 for r in table], w, label="DRAM")
    ax.bar(x + w / 2, [(r["sram_read_bytes"] + r["sram_write_bytes"]) / 1e6 for r in table], w, label="SRAM")
    ax.set_title("bytes moved (MB)")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    hits = [r["dram_row_hit_rate"] for r in table]
    ax.bar(x, [h if h is not None else 0.0 for h in hits], color="#228833")
    for i, h in enumerate(hits):
        ax.text(i, (h or 0.0) + 0.01, "n/a" if h is None else f"{h:.0%}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_title("DRAM row-buffer hit rate")
    ax = axes[1, 1]
    w = 0.8 / len(UTIL_GROUPS)
    for j, g in enumerate(UTIL_GROUPS):
        ax.bar(x - 0.4 + (j + 0.5) * w, [r[f"util_{g}"] or 0.0 for r in table], w, label=g)
    ax.set_ylim(0, 1.05)
    ax.set_title("utilization")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1, 2]
    sav = [r["dram_savings_vs_dense"] for r in table]
    ax.bar(x, [s if s is not None else 0.0 for s in sav], color="#aa3377")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_title("DRAM bytes: dense / this")
    for a in axes.flat:
        a.set_xticks(x)
        a.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def write_outputs(table: list[dict[str, Any]], out: Path, trace_desc: str, *,
                  plot: bool = True) -> list[Path]:
    """compare.csv, compare.md and (when matplotlib is installed) compare.png, each written atomically."""
    from soc.io import write_text

    written = []
    write_text(out / "compare.csv", _csv_text(table))
    written.append(out / "compare.csv")
    write_text(out / "compare.md", _md_text(table, trace_desc))
    written.append(out / "compare.md")
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("soc compare: compare.png skipped: matplotlib is not installed "
                  "(pip install -e '.[plots]' in the soc checkout)",
                  file=sys.stderr)
        else:
            _plot(table, out / "compare.png")
            written.append(out / "compare.png")
    return written


# --- command line -------------------------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    from soc.faces.args import default_trace
    from soc.config import load_config
    from soc.trace import load_trace

    from soc.faces.args import output_dir, trace_path as bundled_trace

    output_dir(args.out)
    cfgs = [load_config(c, args.set or []) for c in args.configs]  # all configs checked before any run
    trace_path = bundled_trace(args.trace) if args.trace else default_trace()
    trace = load_trace(trace_path, mmap=True)
    m = trace.meta
    desc = (f"{m.model} ({Path(str(trace_path)).name}), {m.layers} layers x {m.heads} heads, "
            f"seq {m.seq_len}, head_dim {m.head_dim}")

    def progress(i, cfg, res):
        print(f"  [{i + 1}/{len(cfgs)}] {cfg.name}: {res.report['time']['latency_ns'] / 1e3:,.1f} us "
              f"({res.report['sim']['wall_s']:.1f} s)", file=sys.stderr)

    wall0 = time.perf_counter()
    results = run_configs(cfgs, trace, seed=args.seed, progress=progress)
    table = rows(results, args.configs)
    written = write_outputs(table, Path(args.out), desc, plot=not args.no_plot)
    print(_md_text(table, desc), end="")
    print(f"compared {len(cfgs)} configs in {time.perf_counter() - wall0:.1f} s; wrote "
          + ", ".join(str(p) for p in written))
    return 0


@extra_command
def add_compare_command(sub: argparse._SubParsersAction) -> None:
    from soc.faces.args import _nonneg_int, _path_text, add_parser

    p = add_parser(sub, "compare", help="run several SoC configs on one trace; write compare.csv/.md/.png",
                   description="Run several SoC configs on one trace; write DIR/compare.csv, .md and .png.")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="SoC config YAML files or bundled names")
    p.add_argument("--trace", default=None, type=_path_text,
                   help="workload trace or bundled trace name (default: traces/minilm-l6-lighthouse.npz)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override applied to every config (repeatable; default: none)")
    p.add_argument("--out", required=True, type=_path_text, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed of the analog noise, an integer >= 0 (default: each config's)")
    p.add_argument("--no-plot", action="store_true", help="skip compare.png (default: draw it)")
    p.set_defaults(func=cmd_compare)
