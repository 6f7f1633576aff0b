"""Peak memory of the functional pass per (query, key) pair of one head: what ``soc run``'s memory check assumes.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_pair_memory.py [--seq-len 8192] [--src CHECKOUT]

For an encoder head (BERT-base shape) and a causal one (LLaMA-7B shape), one layer of one head each, a child
process synthesizes the trace, then runs ``run_functional`` with the default config and reports the growth of
its peak RSS (``ru_maxrss``) over the run, divided by seq_len^2. The trace itself is made before the
measurement starts, so the figure is the pass's own: its score matrices, masks and per-run validity masks.
``--src`` measures another checkout's code (e.g. the code before a change).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
import soc
assert soc.__file__.startswith({root!r}), soc.__file__
from soc.attention.functional import run_functional
from soc.config import load_config
from soc.faces.bench import _synth
from soc.simulate import pruning_spec
trace = _synth({workload!r}, {seq_len}, 1, heads=1)
m = trace.meta
cfg = load_config({root!r} + "/configs/hybrid65nm.yaml")
spec = pruning_spec(cfg)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_functional(trace.q, trace.k, trace.v, scale=m.scale, causal=m.causal, query_offset=m.query_offset,
               pruning=spec, q_tile=cfg.dataflow.q_tile_rows, k_tile=cfg.cim.key_tile(m.head_dim), seed=cfg.seed)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print((after - before) * 1024 / {seq_len} ** 2)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--src", default=str(ROOT), help="checkout whose soc runs (default: this one)")
    args = ap.parse_args(argv)
    root = str(Path(args.src).resolve())
    for label, workload in (("encoder (bert-base)", "bert-base"), ("causal (llama-7b)", "llama-7b")):
        code = CHILD.format(root=root, workload=workload, seq_len=args.seq_len)
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=root)
        per_pair = float(out.stdout.strip().splitlines()[-1])
        print(f"{label:20s} one head, seq {args.seq_len}: {per_pair:5.1f} B a pair "
              f"({per_pair * args.seq_len ** 2 / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
