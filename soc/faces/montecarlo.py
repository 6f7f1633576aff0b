"""`soc montecarlo`: the spread of pruning and task accuracy over chip instances.

Each chip instance ``i`` has its own fixed pattern (``cim.chip_seed = first_chip + i``: per-column gain error
and comparator offset) and its own thermal-noise draw (``seed = base seed + i``). Every instance is simulated
in full (functional pass, timing, and the real model's re-run when the trace was captured from an installed
model); the result is the distribution of each metric: mean, p5, p95, min and max over the chips.

    soc montecarlo --trace traces/minilm-l6-lighthouse.npz --chips 8
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np

from soc.faces.args import extra_command
from soc.errors import ConfigError

#: report values collected per chip: (name, path into report.json)
METRICS = (("kept_fraction", ("pruning", "kept_fraction")),
           ("output_rel_err", ("accuracy", "output_rel_err")),
           ("mass_kept", ("accuracy", "mass_kept")),
           ("top1_agreement", ("accuracy", "top1_agreement")),
           ("empty_rows", ("accuracy", "empty_rows")),
           ("latency_ns", ("time", "latency_ns")),
           ("embedding_cosine", ("accuracy", "model", "embedding_cosine")),
           ("perplexity_change", ("accuracy", "model", "perplexity_change")),
           ("next_token_agreement", ("accuracy", "model", "next_token_agreement")))


def _pick(report: dict, path: tuple[str, ...]) -> float | None:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def band(values: list[float]) -> dict[str, float]:
    """mean, p5, p95 (linear interpolation between order statistics), min and max of ``values``."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "p5": float(np.percentile(arr, 5)), "p95": float(np.percentile(arr, 95)),
            "min": float(arr.min()), "max": float(arr.max())}


def monte_carlo(cfg, trace, *, chips: int = 8, first_chip: int = 0, model_accuracy: bool = True,
                calibration=None) -> dict[str, Any]:
    """Simulate ``chips`` chip instances of ``cfg`` on ``trace``; return per-chip values and their bands."""
    from soc.simulate import simulate

    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise ConfigError(f"chips: expected an integer >= 1, got {chips!r}")
    if isinstance(first_chip, bool) or not isinstance(first_chip, int) or first_chip < 0:
        raise ConfigError(f"first_chip: expected an integer >= 0, got {first_chip!r}")
    rows = []
    for i in range(chips):
        chip_cfg = dataclasses.replace(cfg, cim=dataclasses.replace(cfg.cim, chip_seed=first_chip + i),
                                       seed=cfg.seed + i)
        report = simulate(chip_cfg, trace, model_accuracy=model_accuracy, calibration=calibration).report
        row: dict[str, Any] = {"chip_seed": first_chip + i, "seed": cfg.seed + i}
        row.update({name: _pick(report, path) for name, path in METRICS})
        rows.append(row)
    bands = {name: band([r[name] for r in rows]) for name, _ in METRICS
             if all(r[name] is not None for r in rows)}
    return {"chips": chips, "first_chip": first_chip, "trace": trace.meta.model, "per_chip": rows,
            "bands": bands}


def summary_text(result: dict[str, Any]) -> str:
    lines = [f"{result['chips']} chip instances (chip_seed {result['first_chip']}.."
             f"{result['first_chip'] + result['chips'] - 1}) on {result['trace']}",
             f"  {'metric':<22}{'mean':>12}{'p5':>12}{'p95':>12}{'min':>12}{'max':>12}"]
    for name, b in result["bands"].items():
        lines.append(f"  {name:<22}" + "".join(f"{b[k]:>12.4f}" if name != "latency_ns" else f"{b[k]:>12,.0f}"
                                                for k in ("mean", "p5", "p95", "min", "max")))
    return "\n".join(lines)


def cmd_montecarlo(args: argparse.Namespace) -> int:
    from soc.config import load_config
    from soc.io import write_json
    from soc.trace import load_trace

    cfg = load_config(args.config, args.set or [])
    from soc.faces.args import trace_path

    trace = load_trace(trace_path(args.trace), mmap=True)
    result = monte_carlo(cfg, trace, chips=args.chips, first_chip=args.first_chip,
                         model_accuracy=not args.no_model)
    print(summary_text(result))
    if args.out:
        write_json(args.out, result)
        print(f"  wrote {args.out}")
    return 0


@extra_command
def _register(sub) -> None:
    from soc.faces.args import CONFIG_HELP, _nonneg_int, _path_text, _pos_int, add_parser

    p = add_parser(sub, "montecarlo", help="metrics over N chip instances (fixed pattern + noise): mean/p5/p95",
                   description="Replay one trace on N chip instances (chip_seed first..first+N-1, each with its "
                               "own evaluation seed) and report the band of kept fraction, error and task metric.")
    p.add_argument("--config", default="hybrid65nm", type=_path_text, help=CONFIG_HELP + " (default: hybrid65nm)")
    p.add_argument("--trace", default=None, type=_path_text,
                   help="workload trace, a path or a bundled name (default: the bundled MiniLM trace)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value (repeatable; default: none)")
    p.add_argument("--chips", type=_pos_int, default=8, metavar="N", help="chip instances (default: 8)")
    p.add_argument("--first-chip", type=_nonneg_int, default=0, metavar="SEED",
                   help="chip_seed of the first instance, an integer >= 0 (default: 0)")
    p.add_argument("--no-model", action="store_true",
                   help="skip the real model's re-run (no task metric; default: re-run it)")
    p.add_argument("--out", default=None, type=_path_text, metavar="PATH.json",
                   help="write the per-chip values and bands as JSON here (default: print only)")
    p.set_defaults(func=cmd_montecarlo)
