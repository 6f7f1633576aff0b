"""Latency of traces under the layer barrier vs one event loop over every layer's tiles (the model before it).

    SETS="dram.kind=banked;dram.preset=ddr4-3200" python benchmarks/layer_barrier.py traces/*.npz

Decode traces are skipped (their steps do not run through the layer barrier).
"""

from __future__ import annotations

import os
import sys

from soc.config import load_config
from soc.decode import decode_layout
from soc.simulate import shape_of, simulate
from soc.system import System
from soc.trace import load_trace


def main() -> None:
    cfg = load_config(None, [s for s in os.environ.get("SETS", "").split(";") if s])
    for path in sys.argv[1:]:
        trace = load_trace(path, mmap=True)
        if decode_layout(trace) is not None:
            continue
        res = simulate(cfg, trace, model_accuracy=False)
        old = System(cfg, shape_of(trace)).run(res.functional.chunks).latency_ns
        new = res.stats.latency_ns
        print(f"{path}: {trace.meta.layers} layers, one event loop {old / 1e3:,.1f} us -> layer barrier "
              f"{new / 1e3:,.1f} us ({new / old - 1:+.2%})")


if __name__ == "__main__":
    main()
