"""Kept fraction vs task accuracy on the bundled real traces (README's table).

For each model and each target kept fraction, per-layer margins are calibrated (`soc calibrate`), the trace is
simulated on the paper's chip, and the real model is re-run with the same pruning in every layer.

    python benchmarks/pruning_accuracy.py            # prints the markdown table
    python benchmarks/pruning_accuracy.py --write    # also writes benchmarks/results/pruning_accuracy.md
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import soc
from soc.calibrate import calibrate_margins
from soc.config import LayerPruning

ROOT = Path(__file__).resolve().parent.parent
TRACES = {"minilm-l6": ROOT / "traces" / "minilm-l6-lighthouse.npz",
          "smollm2-135m": ROOT / "traces" / "smollm2-135m-bread.npz"}
TARGETS = (0.5, 0.35, 0.25, 0.15)


def with_margins(cfg, rows):
    per_layer = {r["layer"]: LayerPruning(rule="margin", margin=r["margin"]) for r in rows}
    return dataclasses.replace(cfg, pruning=dataclasses.replace(cfg.pruning, rule="margin", per_layer=per_layer))


def task_text(model: dict) -> str:
    if "skipped" in model:
        return "n/a (model not installed)"
    if model["metric"] == "embedding_cosine":
        return f"embedding cosine {model['embedding_cosine']:.4f}"
    return (f"perplexity {model['perplexity_pruned']:.2f} vs {model['perplexity_dense']:.2f} "
            f"({model['perplexity_change']:+.1%})")


def main() -> str:
    base = soc.load_config(ROOT / "configs" / "hybrid65nm.yaml")
    lines = ["| model | rule | kept fraction | output rel. error | softmax mass kept | task metric (pruned vs dense) "
             "| DRAM savings | latency (us) |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for name, path in TRACES.items():
        trace = soc.load_trace(path)
        guarded = dataclasses.replace(base, pruning=dataclasses.replace(base.pruning, keep_sink_tokens=1,
                                                                        keep_recent_tokens=1))
        runs = [("threshold, calibrated per head, 0.25", base),
                ("same, + first and own token always kept", guarded)]
        for target in TARGETS:
            rows = calibrate_margins(base, trace, target_kept=target)
            runs.append((f"margin per layer, target {target}", with_margins(base, rows)))
        for label, cfg in runs:
            r = soc.simulate(cfg, trace).report
            a = r["accuracy"]
            lines.append(f"| {name} | {label} | {r['pruning']['kept_fraction']:.3f} | {a['output_rel_err']:.3f} | "
                         f"{a['mass_kept']:.3f} | {task_text(a.get('model', {'skipped': ''}))} | "
                         f"{r['traffic']['savings']['dram']:.2f}x | {r['time']['latency_ns'] / 1e3:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    table = main()
    print(table)
    if "--write" in sys.argv:
        out = ROOT / "benchmarks" / "results" / "pruning_accuracy.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n", encoding="utf-8")
