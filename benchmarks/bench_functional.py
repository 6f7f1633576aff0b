"""The functional pass against its floor, numpy dense attention, at one BLAS thread (issue 14 target: <= 2x).

    python3 benchmarks/bench_functional.py [--workload bert-base] [--seq-len 512] [--layers N]
                                           [--repeats 5] [--legacy] [--out FILE.json]

In one process and in rotating order, ``--repeats`` times each: the floor (numpy dense attention as ``soc
bench`` measures it: Q.K^T, the causal mask if any, softmax, P.V of every layer in float32), the functional
pass of ``soc run`` (the config's pruning: a calibrated threshold with analog noise), the same pass without
thermal noise, and the noise draw alone (the readout's draw of ``soc.attention.approx``, one value per pair).
``--legacy`` adds the pass this one replaced (tests/legacy_functional.py). Medians of CPU time (and of wall
time) are reported, and each figure as a ratio of the floor's median CPU time: on a shared machine the ratios
move less than the seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from soc.attention.functional import run_functional  # noqa: E402
from soc.config import load_config  # noqa: E402
from soc.faces.bench import dense_attention_s, noise_draw_s  # noqa: E402  (what soc bench measures)
from soc.simulate import pruning_spec  # noqa: E402
from soc.trace import synth_trace  # noqa: E402
from soc.io import write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="bert-base")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--config", default=str(ROOT / "configs/hybrid65nm.yaml"))
    ap.add_argument("--legacy", action="store_true", help="also time the pass this one replaced")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    trace = synth_trace(args.workload, seq_len=args.seq_len, layers=args.layers, seed=0)
    m = trace.meta
    cfg = load_config(args.config)
    spec = pruning_spec(cfg)
    quiet = dataclasses.replace(spec, quant=dataclasses.replace(spec.quant, noise_sigma_lsb=0.0,
                                                                noise_fraction_fs=0.0))
    k_tile = cfg.cim.key_tile(m.head_dim)

    def functional(pruning, module=None):
        run = run_functional if module is None else module.run_functional
        return lambda: run(trace.q, trace.k, trace.v, scale=m.scale, causal=m.causal,
                           query_offset=m.query_offset, pruning=pruning, q_tile=cfg.dataflow.q_tile_rows,
                           k_tile=k_tile, seed=cfg.seed)

    variants = {
        "numpy_dense_attention": lambda: dense_attention_s(trace.q, trace.k, trace.v, m.causal),
        "functional": functional(spec),
        "functional_no_noise": functional(quiet),
        "noise_draw_only": lambda: noise_draw_s(m.layers, m.heads, trace.seq_q, m.seq_len),
    }
    if args.legacy:
        import legacy_functional

        variants["legacy_functional"] = functional(spec, legacy_functional)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    with threadpool_limits(limits=1):
        for name in names:  # warm-up: first-touch of the trace pages, BLAS buffers
            variants[name]()
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:
                c0, t0 = time.process_time(), time.perf_counter()
                variants[name]()
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in cpu.items()}
    floor = med["numpy_dense_attention"]
    result = {
        "workload": {"model": m.model, "layers": m.layers, "heads": m.heads, "seq_len": m.seq_len,
                     "head_dim": m.head_dim, "causal": m.causal},
        "config": os.path.relpath(args.config, ROOT), "repeats": args.repeats, "blas_threads": 1,
        "median_cpu_s": med, "median_wall_s": {name: statistics.median(ts) for name, ts in wall.items()},
        "runs_cpu_s": cpu, "runs_wall_s": wall,
        "ratio_to_dense_attention": {name: t / floor for name, t in med.items()},
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                    "load_average": list(os.getloadavg())},
    }
    w = result["workload"]
    print(f"bench_functional: {w['model']} {w['layers']}x{w['heads']} heads, seq {w['seq_len']}, head_dim "
          f"{w['head_dim']}, median of {args.repeats}, 1 BLAS thread, load {result['machine']['load_average'][0]:.1f}")
    for name, t in med.items():
        print(f"  {name:24s} {t:8.3f} s CPU  {t / floor:5.2f}x dense attention")
    if args.out:
        write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
        print(f"  wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
