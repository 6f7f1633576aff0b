"""`soc calibrate`: per-layer pruning margins for a target kept fraction or a target accuracy.

Layers differ: in MiniLM the middle layers prune 79-86% at a margin of 4 while the first and last stay dense
(REFERENCE.md §4). For each layer, a bisection over the margin (softmax-logit units) finds the smallest margin
that meets an accuracy target (softmax mass kept, or output relative error) or the margin whose kept fraction
is closest to a target, on the CIM's own approximate scores (same quantization and noise streams as a run).
The result is a config that extends the base with ``pruning.per_layer`` overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from soc.cli import extra_command
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
    approx = cim_scores(q_l, k_h, spec.quant, scale, seed=seed, layer=layer)  # scored once, pruned per margin
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


def calibrated_config_text(base: str, rows: list[dict], note: str, out: str | None = None) -> str:
    """The calibrated config; ``extends`` is relative to where it will be written, so the pair can move."""
    from soc.config.loader import resolve_config_path

    base_path = resolve_config_path(base).resolve()
    parent = base_path if out is None else Path(os.path.relpath(base_path, Path(out).resolve().parent))
    per_layer = {r["layer"]: {"rule": "margin", "margin": r["margin"]} for r in rows}
    body = {"extends": str(parent), "name": f"{base_path.stem}-calibrated",
            "pruning": {"rule": "margin", "per_layer": per_layer}}
    lines = [f"# {note}"] + [f"#   layer {r['layer']}: margin {r['margin']:.3f}, kept {r['kept_fraction']:.3f}, "
                            f"mass {r['mass_kept']:.4f}, output err {r['output_rel_err']:.4f}" for r in rows]
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from soc.config import load_config
    from soc.io import write_text
    from soc.trace import load_trace

    cfg = load_config(args.config, args.set or [])
    trace = load_trace(args.trace, mmap=True)
    rows = calibrate_margins(cfg, trace, target_kept=args.target_kept, target_mass=args.target_mass,
                             target_err=args.target_err, seed=args.seed)
    target = (f"kept fraction {args.target_kept}" if args.target_kept is not None else
              f"softmax mass kept >= {args.target_mass}" if args.target_mass is not None else
              f"output relative error <= {args.target_err}")
    note = f"per-layer margins calibrated on {args.trace} for {target}"
    text = calibrated_config_text(args.config, rows, note, args.out)
    print(text, end="")
    if args.out:
        write_text(args.out, text)
        print(f"# wrote {args.out}")
    return 0


@extra_command
def _register(sub) -> None:
    p = sub.add_parser("calibrate", help="per-layer margins for a target kept fraction or accuracy")
    p.add_argument("--config", default="configs/hybrid65nm.yaml")
    p.add_argument("--trace", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=None)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--target-kept", type=float, help="kept fraction per layer, in (0, 1]")
    group.add_argument("--target-mass", type=float, help="softmax mass kept per layer, in (0, 1]")
    group.add_argument("--target-err", type=float, help="output relative error per layer, >= 0")
    p.add_argument("--out", default=None, help="write the calibrated config here")
    p.set_defaults(func=cmd_calibrate)
