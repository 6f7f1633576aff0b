"""How much faster a sweep runs on local worker processes than serially: 16 points of the paper's chip.

    python3 benchmarks/bench_sweep.py [--workers 2] [--seq-len 512] [--layers 2] [--repeats 1] [--limit 1.6]
                                      [--out benchmarks/results/sweep.txt]

The sweep: pruning.target_kept_fraction x dataflow.q_tile_rows x sram.bank_bytes (4 x 2 x 2 = 16 points) on a
synthetic BERT-base slice that every worker builds itself. Each executor runs the whole sweep into a fresh
directory; the wall time includes starting the worker processes and synthesizing the trace in each. The two
results.csv must agree point for point (all columns but the wall-time one) and every point must succeed.
With ``--repeats N`` the two executors alternate N times and the best time of each counts (the minimum is the
figure least disturbed by other work on the machine).

Both sides compute with one BLAS thread per process (set below, before numpy loads): the process executor
gives its workers one thread each, and a serial run whose BLAS threads fight over the same cores would be an
unfairly slow baseline. The acceptance target is a speedup >= 1.6 with 2 workers on 2 cores; exit status 1
below ``--limit``. The machine's load average is recorded beside the times: other work on the cores lowers
the speedup.
"""

from __future__ import annotations

import os

for _key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_key, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soc.io import write_text  # noqa: E402
from soc.sweep import parse_sweep, run_sweep  # noqa: E402
from soc.sweep.store import NONDETERMINISTIC  # noqa: E402


def sweep_spec(seq_len: int, layers: int):
    data = {
        "name": "bench16",
        "base": str(ROOT / "configs" / "hybrid65nm.yaml"),
        "traces": [{"workload": "bert-base", "seq_len": seq_len, "layers": layers, "seed": 0}],
        "factors": {"pruning.target_kept_fraction": [0.15, 0.25, 0.35, 0.5], "dataflow.q_tile_rows": [16, 32],
                    "sram.bank_bytes": [8192, 16384]},
        "mode": "product",
        "seed": 0,
    }
    return parse_sweep(data, "bench16", ROOT)


def timed(spec, executor: str, workers: int, folder: Path):
    t0 = time.perf_counter()
    summary = run_sweep(spec, folder / executor, executor=executor, workers=workers, plot=False,
                        progress=None)
    return time.perf_counter() - t0, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternate the executors N times, keep the best")
    ap.add_argument("--limit", type=float, default=1.6, help="minimum speedup (exit 1 below)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.txt"))
    args = ap.parse_args()

    spec = sweep_spec(args.seq_len, args.layers)
    serial_runs, procs_runs, loads = [], [], [os.getloadavg()[0]]
    for _ in range(max(1, args.repeats)):
        with tempfile.TemporaryDirectory(prefix="bench_sweep.") as tmp:
            serial_runs.append(timed(spec, "serial", 1, Path(tmp)))
            loads.append(os.getloadavg()[0])
            procs_runs.append(timed(spec, "processes", args.workers, Path(tmp)))
            loads.append(os.getloadavg()[0])
    serial_s, serial = min(serial_runs, key=lambda r: r[0])
    procs_s, procs = min(procs_runs, key=lambda r: r[0])
    a = {r["id"]: r for r in serial.rows}
    same = all(a.keys() == {r["id"] for r in run.rows} and all(
        a[i][c] == r[c] for r in run.rows for i in [r["id"]] for c in a[i] if c not in NONDETERMINISTIC)
        for _, run in serial_runs + procs_runs)
    ok = sum(r["status"] == "ok" for r in procs.rows)
    speedup = serial_s / procs_s
    verdict = "PASS" if speedup >= args.limit and same and ok == len(a) else "FAIL"
    per_point = sorted(float(r["sim_wall_s"]) for r in a.values() if r["sim_wall_s"])
    lines = [
        "soc sweep benchmark: serial executor vs local worker processes",
        f"sweep           {len(a)} points (4 kept fractions x 2 q_tile_rows x 2 sram.bank_bytes), "
        f"bert-base synthetic seq_len {args.seq_len}, {args.layers} layers",
        f"machine         {platform.platform()}, python {platform.python_version()}, "
        f"{os.cpu_count()} cores, one BLAS thread per process",
        f"point wall      median {per_point[len(per_point) // 2]:.2f} s (serial run)" if per_point else "",
        f"serial          {serial_s:7.2f} s   (best of {len(serial_runs)}: "
        f"{', '.join(f'{t:.2f}' for t, _ in serial_runs)})",
        f"processes x{args.workers}    {procs_s:7.2f} s   (best of {len(procs_runs)}: "
        f"{', '.join(f'{t:.2f}' for t, _ in procs_runs)})",
        f"load average    {', '.join(f'{x:.2f}' for x in loads)} (1-min, before and after each run)",
        f"speedup         {speedup:.2f}x   (target >= {args.limit:.2f}x with 2 workers on 2 cores)",
        f"results agree   {'yes' if same else 'NO'} (every column but sim_wall_s), {ok}/{len(a)} points ok",
        f"verdict         {verdict}",
    ]
    text = "\n".join(line for line in lines if line) + "\n"
    write_text(args.out, text)
    sys.stdout.write(text)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
