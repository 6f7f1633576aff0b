"""`soc calibrate`: per-layer pruning margins for a target kept fraction or a target accuracy.

Layers differ: in MiniLM the middle layers prune 79-86% at a margin of 4 while the first and last stay dense
(REFERENCE.md §4). For each layer, a bisection over the margin (softmax-logit units) finds the smallest margin
that meets an accuracy target (softmax mass kept, or output relative error) or the margin whose kept fraction
is closest to a target, on the CIM's own approximate scores (same quantization and noise streams as a run).
The result is a config that extends the base with ``pruning.per_layer`` overrides.

``--rule threshold`` instead fixes the comparator references: the per-head thresholds that keep the target
fraction of each layer on the calibration trace, written as ``threshold_per_head`` (what a chip would store).
``--evaluate T2`` measures the calibrated config on another trace (held out: another text of the same model),
where the kept fraction no longer equals the target; that is the honest figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from soc.faces.args import extra_command
from soc.errors import ConfigError

MARGIN_MAX = 64.0
STEPS = 24


def _layer_stats(q_l, k_l, v_l, *, spec, scale, valid, seed, layer, query_offset):
    """Closures measuring kept fraction, mass kept and output error of one layer at a given margin."""
    from soc.attention.cim_layer import cim_scores, prune_layer
    from soc.attention.exact import kv_for_heads, scores, softmax_masked, weighted_sum

    heads = q_l.shape[0]
    base = spec.for_layer(layer)  # keeps its always-kept sink and recent tokens
    k_h, v_h = kv_for_heads(k_l, 0, heads, heads), kv_for_heads(v_l, 0, heads, heads)
    logits = scores(q_l, k_h, scale)
    probs = softmax_masked(logits, valid)
    out_ref = weighted_sum(probs, v_h)
    # scored once, pruned per margin
    approx = cim_scores(q_l, k_h, spec.quant, scale, seed=seed, layer=layer, layer_heads=heads, kv_heads=k_l.shape[0])
    n_valid = float(np.broadcast_to(valid, logits.shape).sum())

    def measure(margin: float) -> dict[str, float]:
        keep = prune_layer(q_l, k_h, valid, dataclasses.replace(base, rule="margin", margin=margin),
                           quant=spec.quant, scale=scale, seed=seed, layer=layer, query_offset=query_offset,
                           scores=approx).keep
        out = weighted_sum(softmax_masked(logits, keep), v_h)
        rows = np.broadcast_to(valid, logits.shape).any(-1)
        return {"kept_fraction": keep.sum() / n_valid,
                "mass_kept": float((probs * keep).sum(-1)[rows].mean()),
                "output_rel_err": float(np.linalg.norm(out - out_ref) / max(np.linalg.norm(out_ref), 1e-30))}
    return measure


def _bisect(measure: Callable[[float], dict[str, float]], key: str, target: float, increasing: bool) -> float:
    """Smallest margin whose measure[key] reaches the target (monotone in the margin)."""
    lo, hi = 0.0, MARGIN_MAX
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        value = measure(mid)[key]
        ok = value >= target if increasing else value <= target
        if ok:
            hi = mid
        else:
            lo = mid
    return hi


def calibrate_margins(cfg, trace, *, target_kept: float | None = None, target_mass: float | None = None,
                      target_err: float | None = None, seed: int | None = None) -> list[dict]:
    from soc.attention.exact import valid_mask
    from soc.simulate import pruning_spec

    chosen = [t for t in (target_kept, target_mass, target_err) if t is not None]
    if len(chosen) != 1:
        raise ConfigError("calibrate: give exactly one of --target-kept, --target-mass, --target-err")
    m = trace.meta
    spec = pruning_spec(cfg)
    seed = cfg.seed if seed is None else seed
    valid = valid_mask(trace.q.shape[2], m.seq_len, m.causal, m.query_offset)
    rows = []
    for layer in range(m.layers):
        q_l, k_l, v_l = (np.asarray(a[layer], dtype=np.float32) for a in (trace.q, trace.k, trace.v))
        measure = _layer_stats(q_l, k_l, v_l, spec=spec, scale=m.scale, valid=valid, seed=seed, layer=layer,
                               query_offset=m.query_offset)
        if target_kept is not None:
            margin = _bisect(measure, "kept_fraction", target_kept, increasing=True)
        elif target_mass is not None:
            margin = _bisect(measure, "mass_kept", target_mass, increasing=True)
        else:
            margin = _bisect(measure, "output_rel_err", target_err, increasing=False)
        rows.append({"layer": layer, "margin": round(margin, 4), **measure(margin)})
    return rows


def calibrate_thresholds(cfg, trace, *, target_kept: float, seed: int | None = None) -> list[dict]:
    """Per layer, the per-head comparator references that keep ``target_kept`` of the pairs on ``trace``
    (the calibrated threshold rule, fixed so that it can be shipped and applied to other inputs)."""
    from soc.simulate import simulate

    if target_kept is None:
        raise ConfigError("calibrate: --rule threshold needs --target-kept")
    pruning = dataclasses.replace(cfg.pruning, rule="threshold", target_kept_fraction=target_kept,
                                  threshold=None, threshold_per_head=None, per_layer={}, calibration_trace=None)
    run = simulate(dataclasses.replace(cfg, pruning=pruning), trace, seed=seed, model_accuracy=False).report
    return [{"layer": r["layer"], "thresholds": [round(t, 6) for t in r["thresholds"]],
             **{k: r[k] for k in ("kept_fraction", "mass_kept", "output_rel_err")}}
            for r in run["pruning"]["per_layer"]]


def with_rows(cfg, rows: list[dict]):
    """``cfg`` with the calibrated rows as per-layer overrides (margins, or fixed per-head thresholds)."""
    from soc.config import LayerPruning

    if rows and "thresholds" in rows[0]:
        per_layer = {r["layer"]: LayerPruning(rule="threshold", threshold_per_head=tuple(r["thresholds"]))
                     for r in rows}
        rule = "threshold"
    else:
        per_layer = {r["layer"]: LayerPruning(rule="margin", margin=r["margin"]) for r in rows}
        rule = "margin"
    return dataclasses.replace(cfg, pruning=dataclasses.replace(cfg.pruning, rule=rule, per_layer=per_layer,
                                                                calibration_trace=None))


def evaluate_rows(cfg, rows: list[dict], trace, seed: int | None = None) -> list[dict]:
    """The calibrated rows applied to another (held-out) trace: per-layer kept fraction, mass, error."""
    from soc.simulate import simulate

    run = simulate(with_rows(cfg, rows), trace, seed=seed, model_accuracy=False).report
    return [{k: r[k] for k in ("layer", "kept_fraction", "mass_kept", "output_rel_err")}
            for r in run["pruning"]["per_layer"]]


def _row_text(r: dict) -> str:
    what = f"margin {r['margin']:.3f}" if "margin" in r else f"{len(r['thresholds'])} thresholds"
    return (f"#   layer {r['layer']}: {what}, kept {r['kept_fraction']:.3f}, mass {r['mass_kept']:.4f}, "
            f"output err {r['output_rel_err']:.4f}")


def calibrated_config_text(base: str, rows: list[dict], note: str, out: str | None = None,
                           held_out: tuple[str, list[dict]] | None = None) -> str:
    """The calibrated config; ``extends`` is relative to where it will be written, so the pair can move."""
    from soc.config.loader import resolve_config_path

    base_path = resolve_config_path(base).resolve()
    parent = base_path if out is None else Path(os.path.relpath(base_path, Path(out).resolve().parent))
    if rows and "thresholds" in rows[0]:
        per_layer = {r["layer"]: {"rule": "threshold", "threshold_per_head": r["thresholds"]} for r in rows}
        rule = "threshold"
    else:
        per_layer = {r["layer"]: {"rule": "margin", "margin": r["margin"]} for r in rows}
        rule = "margin"
    body = {"extends": str(parent), "name": f"{base_path.stem}-calibrated",
            "pruning": {"rule": rule, "per_layer": per_layer}}
    lines = [f"# {note}"] + [_row_text(r) for r in rows]
    if held_out is not None:
        name, evaluated = held_out
        lines.append(f"# held out, on {name}:")
        lines += [f"#   layer {r['layer']}: kept {r['kept_fraction']:.3f}, mass {r['mass_kept']:.4f}, "
                  f"output err {r['output_rel_err']:.4f}" for r in evaluated]
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from soc.config import load_config
    from soc.io import write_text
    from soc.trace import load_trace

    from soc.simulate import calibration_trace_path

    _check_out(args)
    cfg = load_config(args.config, args.set or [])
    trace = load_trace(calibration_trace_path(args.trace), mmap=True)
    if args.rule == "threshold":
        if args.target_kept is None:
            raise ConfigError("calibrate: --rule threshold needs --target-kept (a kept fraction in (0, 1])")
        rows = calibrate_thresholds(cfg, trace, target_kept=args.target_kept, seed=args.seed)
    else:
        rows = calibrate_margins(cfg, trace, target_kept=args.target_kept, target_mass=args.target_mass,
                                 target_err=args.target_err, seed=args.seed)
    held_out = None
    if args.evaluate:
        held_out = (args.evaluate, evaluate_rows(cfg, rows, load_trace(calibration_trace_path(args.evaluate),
                                                                       mmap=True), seed=args.seed))
    target = (f"kept fraction {args.target_kept}" if args.target_kept is not None else
              f"softmax mass kept >= {args.target_mass}" if args.target_mass is not None else
              f"output relative error <= {args.target_err}")
    what = "per-head thresholds" if args.rule == "threshold" else "margins"
    note = f"per-layer {what} calibrated on {args.trace} for {target}"
    text = calibrated_config_text(args.config, rows, note, args.out, held_out)
    print(text, end="")
    if args.out:
        write_text(args.out, text)
        print(f"# wrote {args.out}")
    return 0


def _nonneg_int_arg(text: str) -> int:
    from soc.faces.args import _nonneg_int
    return _nonneg_int(text)


def _fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _error_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _check_out(args: argparse.Namespace) -> None:
    """The output must not be the base config or a file it extends: it would extend itself."""
    if not args.out:
        return
    from soc.faces.args import _short
    from soc.config.loader import config_chain

    out = Path(args.out)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--out {_short(out)}: expected a .yaml file name for the calibrated config")
    if out.is_dir():
        raise ConfigError(f"--out {_short(out)}: is a directory; expected a .yaml file name")
    target = out.resolve()
    if target in config_chain(args.config):
        raise ConfigError(f"--out {_short(out)}: is {args.config} or a config it extends; the calibrated "
                          f"config extends it, so write it elsewhere")


@extra_command
def _register(sub) -> None:
    from soc.faces.args import CONFIG_HELP, SEED_HELP, _path_text, add_parser

    p = add_parser(sub, "calibrate", help="per-layer margins or per-head thresholds for a target",
                   description="Per-layer pruning margins (or per-head comparator references) that meet a target "
                               "on a trace; prints (and writes) a config that extends the base.")
    p.add_argument("--config", default="hybrid65nm", type=_path_text, help=CONFIG_HELP + " (default: hybrid65nm)")
    p.add_argument("--trace", required=True, type=_path_text,
                   help="trace to calibrate on: a path or a bundled trace name")
    p.add_argument("--rule", choices=("margin", "threshold"), default="margin",
                   help="margin: per-layer margins; threshold: fixed per-head comparator references "
                        "(default: margin)")
    p.add_argument("--evaluate", default=None, metavar="TRACE", type=_path_text,
                   help="also measure the calibrated config on this held-out trace (path or bundled name; "
                        "default: none)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value (repeatable; default: none)")
    p.add_argument("--seed", type=_nonneg_int_arg, default=None, help=SEED_HELP)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--target-kept", type=_fraction_arg, metavar="F",
                       help="kept fraction per layer, in (0, 1] (one target is required)")
    group.add_argument("--target-mass", type=_fraction_arg, metavar="F",
                       help="softmax mass kept per layer, in (0, 1] (one target is required)")
    group.add_argument("--target-err", type=_error_arg, metavar="E",
                       help="output relative error per layer, a finite number >= 0 (one target is required)")
    p.add_argument("--out", default=None, metavar="PATH.yaml",
                   help="write the calibrated config here (default: print only); never the base or a file it "
                        "extends")
    p.set_defaults(func=cmd_calibrate)
