"""What pruning saves in DRAM traffic (README "What pruning saves"): DRAM bytes against SRAM size for the best
dense dataflow and the hybrid chip's three survivor dataflows, and the SPRINT-like config against a per-query
dense baseline, on both bundled real traces.

The SRAM sweep counts bytes with the dataflow rule (soc.dataflow.demand on one functional pass per trace): the
event loop counts exactly these (tests/test_dataflow.py, tests/test_savings.py), and the pruning does not
depend on the SRAM. The SPRINT-like numbers come from full simulations.

    python benchmarks/bench_savings.py              # (~5 min) writes benchmarks/results/savings.json and
                                                    # docs/img/dram_vs_sram.png
    python benchmarks/bench_savings.py --plot-only  # redraws the figure from the results
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import soc
from soc.config import load_config
from soc.dataflow import (Placement, dense_best_traffic, dense_traffic, demand, kv_placement, traffic_totals)
from soc.errors import WiringError
from soc.simulate import dense_config, shape_of
from soc.trace import synth_trace
from soc.trace.workload import load_workload

ROOT = Path(__file__).resolve().parent.parent
TRACES = {"minilm-l6": ROOT / "traces" / "minilm-l6-lighthouse.npz",
          "smollm2-135m": ROOT / "traces" / "smollm2-135m-bread.npz"}
Q_TILES = (16, 32, 64, 128)
SRAM_KB = (16, 24, 32, 48, 64, 96, 128, 192, 256)
RESULTS = ROOT / "benchmarks" / "results" / "savings.json"
FIGURE = ROOT / "docs" / "img" / "dram_vs_sram.png"
SYNTH = "smollm2-135m synthetic 1024 tokens"
FLOWS = {"hybrid tile-union": "stream", "hybrid row": "row", "hybrid cache": "cache"}


def dram(t: dict) -> float:
    return t["dram_read_bytes"] + t["dram_write_bytes"]


def with_sram(cfg, kb: int):
    return dataclasses.replace(cfg, sram=dataclasses.replace(cfg.sram, banks=8, bank_bytes=kb * 1024 // 8))


def hybrid_bytes(cfg, func, shape, kv: str) -> float | None:
    """DRAM bytes of the hybrid chip with dataflow ``kv`` (row: the SRAM the query tile and MSBs leave is its
    survivor buffer, as the cache gets), or None when the SRAM cannot hold it."""
    hd, elem = shape.head_dim, cfg.dataflow.element_bytes
    leftover = cfg.sram.capacity_bytes - cfg.dataflow.q_tile_rows * hd * (elem + cfg.dataflow.output_bytes)
    msb = shape.seq_k * hd * cfg.cim.key_bits // 8
    buffer = leftover - msb if leftover - msb >= 4 * hd * elem else leftover
    flow = dataclasses.replace(cfg.dataflow, kv_placement=kv, survivor_buffer_bytes=max(0, buffer))
    cfg = dataclasses.replace(cfg, dataflow=flow)
    try:
        placement = kv_placement(cfg, shape)
    except WiringError:
        return None
    return dram(traffic_totals(demand(func.chunks, cfg, shape, placement, func.survivors), placement))


def sram_sweep(name: str, trace) -> dict:
    """Per SRAM size: dense best, and each hybrid dataflow at its best query tile of Q_TILES (the dense side
    chooses its tiles too) and at the paper config's 32 rows."""
    base = load_config(ROOT / "configs" / "hybrid65nm.yaml")
    shape = shape_of(trace)
    funcs = {}
    for q_tile in Q_TILES:
        # cache: the functional pass then keeps the survivor sets row and cache need
        cfg = load_config(ROOT / "configs" / "hybrid65nm.yaml", [f"dataflow.q_tile_rows={q_tile}",
                                                                 "dataflow.kv_placement=cache"])
        funcs[q_tile] = (cfg, soc.simulate(cfg, trace, model_accuracy=False).functional)
    rows = []
    for kb in SRAM_KB:
        row = {"sram_kb": kb, "dense best": dram(dense_best_traffic(funcs[32][1], dense_config(with_sram(base, kb)),
                                                                   shape))}
        for label, kv in FLOWS.items():
            by_tile = {q: hybrid_bytes(with_sram(cfg, kb), func, shape, kv) for q, (cfg, func) in funcs.items()}
            fits = {q: b for q, b in by_tile.items() if b is not None}
            best = min(fits, key=fits.get) if fits else None
            row[label] = fits[best] if fits else None
            row[f"{label} q_tile_rows"] = best
            row[f"{label} at q_tile_rows 32"] = by_tile[32]
        rows.append(row)
        print(name, row)
    return {"kept_fraction": funcs[32][1].accuracy["kept_fraction"], "rows": rows}


def sprint(name: str, trace) -> dict:
    """sprint-like against the per-query dense baseline (every query fetches all of its valid K/V rows)."""
    cfg = load_config(ROOT / "configs" / "sprint-like.yaml")
    res = soc.simulate(cfg, trace, model_accuracy=False)
    t = res.report["traffic"]
    shape = shape_of(trace)
    per_query = dense_traffic(res.functional, dense_config(cfg), shape, Placement("stream", False, 0))
    kv_row = 2 * shape.head_dim * cfg.dataflow.element_bytes
    kv_sprint = res.stats.kv_rows_fetched * kv_row
    kv_dense = float(res.functional.dense_chunks["union_keys"].sum()) * kv_row
    out = {"dram_bytes": dram(t), "per_query_dense_dram_bytes": dram(per_query),
           "reduction": 1 - dram(t) / dram(per_query), "kv_bytes": kv_sprint, "per_query_dense_kv_bytes": kv_dense,
           "kv_reduction": 1 - kv_sprint / kv_dense, "kept_fraction": res.report["pruning"]["kept_fraction"],
           "kv_hit_rate": t["kv_hit_rate"], "dense_best_dram_bytes": dram(t["dense_best"]),
           "dram_vs_best": t["savings"]["dram_vs_best"], "latency_us": res.report["time"]["latency_ns"] / 1e3}
    print(name, "sprint-like", out)
    return out


def chip_table(name: str, trace) -> list[dict]:
    """The paper's chip (64 KB SRAM) with each dataflow: full simulations, both baselines from the report."""
    base = load_config(ROOT / "configs" / "hybrid65nm.yaml")
    func = None
    out = []
    for kv in ("auto", "stream", "reuse", "row", "cache"):
        cfg = load_config(ROOT / "configs" / "hybrid65nm.yaml", [f"dataflow.kv_placement={kv}"])
        res = soc.simulate(cfg, trace, model_accuracy=False, functional=func)
        func = res.functional
        t = res.report["traffic"]
        out.append({"kv_placement": kv, "resolved": t["kv_placement"], "dram_bytes": dram(t),
                    "dense_dram_bytes": dram(t["dense"]), "dense_best_dram_bytes": dram(t["dense_best"]),
                    "dense_best": f"{t['dense_best']['kv_placement']}, q_tile {t['dense_best']['q_tile_rows']}",
                    "savings_dram": t["savings"]["dram"], "savings_dram_vs_best": t["savings"]["dram_vs_best"],
                    "kv_hit_rate": t["kv_hit_rate"], "latency_us": res.report["time"]["latency_ns"] / 1e3})
        print(name, out[-1])
    assert base.dataflow.kv_placement == "auto"
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.0))
    styles = {"dense best": ("k", "s", "-"), "hybrid tile-union": ("tab:blue", "o", "--"),
              "hybrid row": ("tab:green", "^", "-"), "hybrid cache": ("tab:red", "v", "-")}
    for ax, (name, res) in zip(axes, results.items()):
        for label, (color, marker, line) in styles.items():
            pts = [(r["sram_kb"], r[label] / 1e6) for r in res["sweep"]["rows"] if r[label] is not None]
            ax.plot(*zip(*pts), color=color, marker=marker, linestyle=line,
                    label=label + ("" if label == "dense best" else " (best q tile)"))
        ax.set_xscale("log", base=2)
        ax.set_xticks(SRAM_KB, [str(k) for k in SRAM_KB])
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("on-chip SRAM (KB)")
        ax.set_ylabel("DRAM bytes (MB, read + write)")
        ax.set_title(f"{name}, {res['sweep']['kept_fraction']:.0%} of pairs kept", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> dict:
    results = {}
    for name, path in TRACES.items():
        trace = soc.load_trace(path)
        results[name] = {"chip": chip_table(name, trace), "sweep": sram_sweep(name, trace),
                         "sprint_like": sprint(name, trace)}
    # the real traces are short (a KV head's K/V is 13-32 KB); a synthetic SmolLM2-shaped context of 1024
    # tokens (128 KB of K/V per KV head) shows the regime where K/V does not fit
    long = synth_trace(load_workload("smollm2-135m"), seq_len=1024, layers=4, seed=0)
    results[SYNTH] = {"sweep": sram_sweep(SYNTH, long)}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, FIGURE)
    return results


if __name__ == "__main__":
    if "--plot-only" in sys.argv:  # redraw from the committed results
        plot(json.loads(RESULTS.read_text()), FIGURE)
    else:
        main()
