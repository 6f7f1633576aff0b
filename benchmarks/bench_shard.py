"""Wall and CPU time of `soc run` serial vs `--workers N` on one trace, interleaved, median of R runs.

    python benchmarks/bench_shard.py TRACE_DIR [--workers 2] [--repeats 3]

CPU time counts this process's children (the `soc run` and its workers). On a shared machine wall time moves
with the load; the report's fields except `sim` are checked identical on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(trace: str, out: Path, extra: list[str]) -> tuple[float, float, dict]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "soc", "run", "--trace", trace, "--out", str(out), *extra], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads((out / "report.json").read_text())
    report.pop("sim")
    return wall, cpu, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"serial": [], f"--workers {a.workers}": []}
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, extra in (("serial", []), (f"--workers {a.workers}", ["--workers", str(a.workers)])):
                wall, cpu, report = one(a.trace, Path(tmp) / f"{r}{len(extra)}", extra)
                ref = ref or report
                if report != ref:
                    raise SystemExit(f"{name} (run {r}): report differs from the first serial one in "
                                     f"{sorted(k for k in report if report[k] != ref.get(k))}")
                runs[name].append((wall, cpu))
    for name, xs in runs.items():
        print(f"{name:12s} wall median {statistics.median(w for w, _ in xs):7.2f} s  "
              f"CPU median {statistics.median(c for _, c in xs):7.2f} s  (walls {', '.join(f'{w:.2f}' for w, _ in xs)})")
    s, p = (statistics.median(w for w, _ in xs) for xs in runs.values())
    print(f"wall serial / sharded: {s / p:.2f}x; reports identical (sim aside) on all {2 * a.repeats} runs")


if __name__ == "__main__":
    main()
