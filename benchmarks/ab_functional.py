"""The functional pass of two checkouts, timed in alternating processes (an A/B of a change, on a noisy machine).

    OPENBLAS_NUM_THREADS=1 python benchmarks/ab_functional.py BEFORE_CHECKOUT [--after CHECKOUT]
        [--workload bert-base] [--seq-len 512] [--layers 2] [--heads 12] [--rounds 3] [--repeats 5]

Each round runs one child process per checkout, in alternating order. A child imports that checkout's ``soc``,
synthesizes the workload (``soc.faces.bench._synth``: the shape with ``--heads`` heads, ``--layers`` layers),
runs ``run_functional`` once to warm up and then ``--repeats`` times, and prints the smallest CPU time (the
least disturbed run). The script prints every round and the median of the rounds per checkout, and their
ratio. Make a checkout of the code before a change with ``git worktree add /tmp/before REV``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import soc
assert soc.__file__.startswith({root!r}), soc.__file__
from soc.attention.functional import run_functional
from soc.config import load_config
from soc.faces.bench import _synth
from soc.simulate import pruning_spec
trace = _synth({workload!r}, {seq_len}, {layers}, heads={heads})
m = trace.meta
cfg = load_config({root!r} + "/configs/hybrid65nm.yaml")
spec = pruning_spec(cfg)
run = lambda: run_functional(trace.q, trace.k, trace.v, scale=m.scale, causal=m.causal,
                             query_offset=m.query_offset, pruning=spec, q_tile=cfg.dataflow.q_tile_rows,
                             k_tile=cfg.cim.key_tile(m.head_dim), seed=cfg.seed)
run()
best = float("inf")
for _ in range({repeats}):
    t0 = time.process_time()
    run()
    best = min(best, time.process_time() - t0)
print(best)
"""


def _child(root: Path, args: argparse.Namespace) -> float:
    code = CHILD.format(root=str(root.resolve()), workload=args.workload, seq_len=args.seq_len, layers=args.layers,
                        heads=args.heads, repeats=args.repeats)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         cwd=str(root))
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="checkout of the code before the change")
    ap.add_argument("--after", default=str(ROOT), help="checkout of the code after it (default: this one)")
    ap.add_argument("--workload", default="bert-base")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    sides = {"before": Path(args.before), "after": Path(args.after)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            times[name].append(_child(sides[name], args))
        print(f"round {r + 1}: before {times['before'][-1]:.3f} s, after {times['after'][-1]:.3f} s CPU", flush=True)
    before, after = (statistics.median(times[name]) for name in ("before", "after"))
    print(f"{args.workload} seq {args.seq_len}, {args.layers} layer(s) x {args.heads} head(s): median of "
          f"{args.rounds} rounds, before {before:.3f} s, after {after:.3f} s CPU ({after / before - 1:+.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
