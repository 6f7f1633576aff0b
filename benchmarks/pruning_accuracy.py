"""Kept fraction vs task accuracy on the bundled real traces (README's table), all calibrated held out.

For each model, the comparator references (threshold rule) and the per-layer margins (`soc calibrate`) are
taken from another text of the same model, the trace is simulated on the paper's chip (default analog
non-idealities, chip 0), and the real model is re-run with the same pruning in every layer.

    python benchmarks/pruning_accuracy.py            # prints the markdown table
    python benchmarks/pruning_accuracy.py --write    # also writes benchmarks/results/pruning_accuracy.md
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import soc
from soc.faces.calibrate import calibrate_margins, with_rows

ROOT = Path(__file__).resolve().parent.parent
#: model -> (evaluated trace, held-out calibration trace)
TRACES = {"minilm-l6": ("minilm-l6-lighthouse", "minilm-l6-orchard"),
          "smollm2-135m": ("smollm2-135m-bread", "smollm2-135m-river")}
TARGETS = (0.5, 0.35, 0.25, 0.15)


def task_text(model: dict) -> str:
    if "skipped" in model:
        return "n/a (model not installed)"
    if model["metric"] == "embedding_cosine":
        return f"embedding cosine {model['embedding_cosine']:.4f}"
    return (f"perplexity {model['perplexity_pruned']:.2f} vs {model['perplexity_dense']:.2f} "
            f"({model['perplexity_change']:+.1%})")


def _pruning(cfg, **fields):
    return dataclasses.replace(cfg, pruning=dataclasses.replace(cfg.pruning, **fields))


def main() -> str:
    base = soc.load_config(ROOT / "configs" / "hybrid65nm.yaml")
    lines = ["| model | rule (calibrated on the other text) | kept fraction | output rel. error | softmax mass kept "
             "| task metric (pruned vs dense) | DRAM savings | latency (us) |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for name, (evaluated, held_out) in TRACES.items():
        trace = soc.load_trace(ROOT / "traces" / f"{evaluated}.npz")
        cal = soc.load_trace(ROOT / "traces" / f"{held_out}.npz")
        default = _pruning(base, calibration_trace=held_out)
        runs = [("threshold 0.25, default: 4 sink + 16 recent keys kept", default),
                ("threshold 0.25, no sink/recent keys", _pruning(default, keep_sink_tokens=0,
                                                                   keep_recent_tokens=0)),
                ("same, calibrated on the evaluated text (optimistic)", _pruning(default, keep_sink_tokens=0,
                                                                                  keep_recent_tokens=0,
                                                                                  calibration_trace=None))]
        for target in TARGETS:
            rows = calibrate_margins(base, cal, target_kept=target)
            runs.append((f"margin per layer, target {target}", with_rows(base, rows)))
        for label, cfg in runs:
            r = soc.simulate(cfg, trace).report
            a = r["accuracy"]
            lines.append(f"| {name} | {label} | {r['pruning']['kept_fraction']:.3f} | {a['output_rel_err']:.3f} | "
                         f"{a['mass_kept']:.3f} | {task_text(a.get('model', {'skipped': ''}))} | "
                         f"{r['traffic']['savings']['dram']:.2f}x | {r['time']['latency_ns'] / 1e3:,.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    table = main()
    print(table)
    if "--write" in sys.argv:
        out = ROOT / "benchmarks" / "results" / "pruning_accuracy.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n", encoding="utf-8")
