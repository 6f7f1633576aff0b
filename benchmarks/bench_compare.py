"""`soc compare` over the four memory-hierarchy configs on a BERT-base trace at seq 512 (issue 4: < 60 s).

Reports the wall time and its ratio to one plain `soc.simulate` of the same trace measured in the same run
(compare shares one functional pass across configs, so four configs cost less than four runs).

    python benchmarks/bench_compare.py [--write]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import soc
from soc.faces.cli import main as soc_main

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [str(ROOT / "configs" / f"mem-{n}.yaml") for n in ("kv-onchip", "lpddr4", "ddr4", "hbm2")]


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "bert512.npz"
        assert soc_main(["trace", "synth", "--workload", "bert-base", "--seq-len", "512", "--out", str(trace)]) == 0
        t0 = time.perf_counter()
        soc.simulate(soc.load_config(ROOT / "configs" / "hybrid65nm.yaml"), soc.load_trace(trace))
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert soc_main(["compare", *CONFIGS, "--trace", str(trace), "--out", str(Path(tmp) / "cmp")]) == 0
        four = time.perf_counter() - t0
        table = (Path(tmp) / "cmp" / "compare.md").read_text()
    return (f"soc compare, 4 memory configs, bert-base seq 512: {four:.1f} s wall "
            f"({four / one:.2f}x one plain simulate of {one:.1f} s); budget 60 s\n\n{table}")


if __name__ == "__main__":
    text = run()
    print(text)
    if "--write" in sys.argv:
        (ROOT / "benchmarks" / "results" / "compare.md").write_text(text, encoding="utf-8")
