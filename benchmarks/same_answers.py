"""Same answers after an event-loop change: every report field except ``sim`` must equal a baseline's.

    OPENBLAS_NUM_THREADS=1 python benchmarks/same_answers.py BASELINE_DIR TRACE [TRACE ...]

``BASELINE_DIR/<trace stem>/report.json`` holds the report of the code before the change (``soc run --trace
TRACE --out BASELINE_DIR/<stem>``). Each trace is run with this checkout's code and the default config; the
script prints, per trace, the number of fields compared and every field that differs (exit 1 if any does),
and the events per tile before and after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def leaves(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, tree


def compare(before: dict, after: dict) -> tuple[int, list[str]]:
    a = dict(leaves({k: v for k, v in before.items() if k != "sim"}))
    b = dict(leaves({k: v for k, v in after.items() if k != "sim"}))
    diffs = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
             if k not in a or k not in b or a[k] != b[k]]
    return len(a), diffs


def main(argv: list[str]) -> int:
    from soc.config import load_config
    from soc.simulate import simulate
    from soc.trace import load_trace

    limit = 0 if "--brief" in argv else 20
    argv = [a for a in argv if a != "--brief"]
    base_dir, traces = Path(argv[0]), argv[1:]
    cfg = load_config("configs/hybrid65nm.yaml")
    bad = 0
    for t in traces:
        stem = Path(t).stem
        before = json.loads((base_dir / stem / "report.json").read_text())
        trace = load_trace(t)
        after = simulate(cfg, trace).report
        # the CLI writes the trace path as given; the library run may name it otherwise
        after["workload"]["trace"] = before["workload"]["trace"]
        n, diffs = compare(before, after)
        tiles = after["sim"]["chunks"]
        print(f"{stem}: {n} fields compared, {len(diffs)} differ; events per tile "
              f"{before['sim']['events'] / tiles:.1f} -> {after['sim']['events'] / tiles:.1f}")
        if diffs:
            sections = sorted({d.split(":")[0].split(".")[0] for d in diffs})
            lat0, lat1 = before["time"]["latency_ns"], after["time"]["latency_ns"]
            print(f"    sections that differ: {', '.join(sections)}; latency {lat0:.1f} -> {lat1:.1f} ns "
                  f"({(lat1 / lat0 - 1) * 100:+.2f}%)")
        for d in diffs[:limit]:
            print("   ", d)
        bad += bool(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
