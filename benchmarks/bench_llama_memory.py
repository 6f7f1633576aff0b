"""Peak memory of a whole-model replay, Llama-7B-shaped, as layers grow: it must stay flat (one layer's worth).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_llama_memory.py [--layers 1,2,4,8] [--seq-len 4096]
        [--out benchmarks/results/llama_memory.txt] [--src DIR] [--keep DIR]

For each layer count L it synthesises a LLaMA-2-7B-shaped directory trace of the first L layers (all 32 heads,
head_dim 128: ``soc trace synth --workload llama-2-7b --seq-len S --layers L --out DIR``), then runs
``soc run --trace DIR`` in a child process and reports the child's peak RSS (``ru_maxrss`` from ``os.wait4``:
anonymous and file-backed pages), its peak anonymous and file-backed RSS sampled from /proc every 50 ms
(the trace is memory-mapped: its pages count as file-backed), and its wall and CPU time. The child is
``soc run`` itself (``soc.faces.cli.main``) with the ``run_layers`` that ``soc.simulate`` calls wrapped to sample the anonymous RSS
while the timing runs and their merge execute (``timing_anon``: its peak; ``timing_start``: at entry, after
the functional pass): the functional pass's own peak (score matrices) hides the timing phase's growth until
many layers, so that column shows what the merge keeps per layer. ``--src`` runs another
checkout's ``soc`` (e.g. the code before a change), for a before/after table. Times depend on the machine's
load: quote them as context; the RSS columns are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "VmRSS:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


# the child: ``soc run`` with the timing phase's anonymous RSS sampled (written as JSON to argv[3])
CHILD = """
import importlib, json, sys, threading
from soc.faces.cli import main

simulate = importlib.import_module("soc.simulate")  # the module (``soc.simulate`` is also the function)

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0

state = {"timing_start_kb": 0, "timing_peak_kb": 0}
real = simulate.run_layers

def sampled(*args, **kwargs):
    state["timing_start_kb"] = anon()
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            state["timing_peak_kb"] = max(state["timing_peak_kb"], anon())
            stop.wait(0.05)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        return real(*args, **kwargs)
    finally:
        stop.set()
        thread.join()
        state["timing_peak_kb"] = max(state["timing_peak_kb"], anon())

simulate.run_layers = sampled
rc = main(["run", "-q", "--trace", sys.argv[1], "--out", sys.argv[2]])
open(sys.argv[3], "w").write(json.dumps(state))
sys.exit(rc)
"""


def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; its peak RSS (rusage), peak anonymous / file RSS (sampled), wall and CPU seconds."""
    t0 = time.perf_counter()
    # the child starts in the checkout it runs: ``python -m``/``-c`` put the working directory first on sys.path
    proc = subprocess.Popen(cmd, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, v in _status_kb(proc.pid).items():
                if k in peaks:
                    peaks[k] = max(peaks[k], v)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(c for c in cmd if c != CHILD)}: exit {proc.returncode}\n{stderr.decode(errors='replace')[-2000:]}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
            "maxrss_mib": usage.ru_maxrss / 1024, "anon_mib": peaks["RssAnon"] / 1024,
            "file_mib": peaks["RssFile"] / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="1,2,4,8", help="layer counts to run, comma-separated (default: 1,2,4,8)")
    ap.add_argument("--seq-len", type=int, default=4096, help="sequence length (default: 4096)")
    ap.add_argument("--workload", default="llama-2-7b", help="workload shape (default: llama-2-7b)")
    ap.add_argument("--src", default=str(REPO), help="checkout whose soc runs (default: this one)")
    ap.add_argument("--keep", default=None, help="directory for the traces (default: a temporary one, removed)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "llama_memory.txt"),
                    help="results file (default: benchmarks/results/llama_memory.txt; '-' for stdout only)")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.layers.split(",")]
    args.src = str(Path(args.src).resolve())
    env = {**os.environ, "PYTHONPATH": args.src, "OPENBLAS_NUM_THREADS": "1"}
    soc = [sys.executable, "-m", "soc"]
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="llama-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"# soc run on {args.workload} (all heads), seq {args.seq_len}, directory trace, one process, "
             f"OPENBLAS_NUM_THREADS=1; src {args.src}",
             f"# {'layers':>6} {'peak_rss_MiB':>12} {'anon_MiB':>9} {'file_MiB':>9} {'wall_s':>8} {'cpu_s':>8} "
             f"{'cpu_s/layer':>11} {'synth_s':>8} {'tiles':>9} {'timing_start_MiB':>16} {'timing_anon_MiB':>15}"]
    print("\n".join(lines), flush=True)
    rows = []
    for n in counts:
        trace = work / f"{args.workload}-{args.seq_len}-L{n}"
        t0 = time.perf_counter()
        if not trace.exists():
            subprocess.run([*soc, "trace", "synth", "-q", "--workload", args.workload, "--seq-len",
                            str(args.seq_len), "--layers", str(n), "--out", str(trace)], env=env, cwd=args.src, check=True,
                           stdout=subprocess.DEVNULL)
        synth_s = time.perf_counter() - t0
        out = work / f"out-L{n}"
        phase = work / f"timing-L{n}.json"
        r = run_child([sys.executable, "-c", CHILD, str(trace), str(out), str(phase)], env)
        tiles = json.loads((out / "report.json").read_text())["sim"]["chunks"]
        timing = json.loads(phase.read_text())
        r["timing_start_mib"], r["timing_mib"] = timing["timing_start_kb"] / 1024, timing["timing_peak_kb"] / 1024
        rows.append((n, r))
        line = (f"  {n:>6} {r['maxrss_mib']:>12.0f} {r['anon_mib']:>9.0f} {r['file_mib']:>9.0f} "
                f"{r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['cpu_s'] / n:>11.1f} {synth_s:>8.1f} {tiles:>9} {r['timing_start_mib']:>16.0f} {r['timing_mib']:>15.0f}")
        lines.append(line)
        print(line, flush=True)
    if len(rows) > 1:
        (n0, a), (n1, b) = rows[0], rows[-1]
        grow = (b["anon_mib"] - a["anon_mib"]) / (n1 - n0)
        timing = (b["timing_mib"] - a["timing_mib"]) / (n1 - n0)
        lines.append(f"# from {n0} to {n1} layers, per layer: peak anonymous RSS {grow:+.0f} MiB, peak RSS "
                     f"{grow_total(a, b, n0, n1):+.0f} MiB, timing phase's peak anonymous RSS {timing:+.0f} MiB")
        print(lines[-1])
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


def grow_total(a: dict, b: dict, n0: int, n1: int) -> float:
    return (b["maxrss_mib"] - a["maxrss_mib"]) / (n1 - n0)


if __name__ == "__main__":
    sys.exit(main())
