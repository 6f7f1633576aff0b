"""Design-space sweeps of the SoC: many (config, trace, seed) points, run serially, in local processes or on
a Dask cluster, recorded one row per point in ``DIR/results.csv`` with each report in
``DIR/points/ID/report.json``, resumable after any interruption, summarised as an energy/latency Pareto plot.

    soc sweep sweeps/paper-pruning.yaml --out out/sweep [--executor serial|processes|dask]
              [--scheduler tcp://HOST:PORT] [--workers N] [--retry-failed] [--no-plot]

Library use: ``run_sweep(load_sweep("sweeps/paper-pruning.yaml"), "out/sweep", executor="serial")``.
"""

from __future__ import annotations

import argparse
import sys

from soc.faces.args import add_parser, extra_command
from soc.errors import ConfigError, SocError
from soc.sweep.executors import EXECUTORS, Outcome, Task, run_point
from soc.sweep.plot import pareto_mask, plot_pareto
from soc.sweep.runner import SweepSummary, run_sweep
from soc.sweep.spec import Point, SweepSpec, TraceRef, load_sweep, parse_sweep, point_id
from soc.sweep.store import METRICS, ResultStore, read_results, report_metrics

__all__ = ["load_sweep", "parse_sweep", "run_sweep", "SweepSpec", "SweepSummary", "Point", "TraceRef", "Task",
           "Outcome", "run_point", "point_id", "read_results", "report_metrics", "ResultStore", "METRICS",
           "EXECUTORS", "pareto_mask", "plot_pareto"]


def cmd_sweep(args: argparse.Namespace) -> int:
    from soc.faces.args import output_dir

    out = output_dir(args.out)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: expected an integer >= 1, got {args.workers}")
    spec = load_sweep(args.sweep)
    executor = args.executor or ("dask" if args.scheduler else "processes")
    summary = run_sweep(spec, out, executor=executor, workers=args.workers, scheduler=args.scheduler,
                        retry_failed=args.retry_failed, plot=not args.no_plot,
                        progress=None if args.quiet else sys.stderr,
                        blas_threads=args.blas_threads or 1)
    ok = sum(r["status"] == "ok" for r in summary.rows)
    print(f"sweep {spec.name}: {summary.total} points, {ok} ok, {len(summary.rows) - ok} failed "
          f"({summary.ran} run now, {summary.resumed} resumed) in {summary.wall_s:.1f} s")
    print(f"  results  {summary.results_csv}")
    if summary.pareto_png is not None:
        print(f"  pareto   {summary.pareto_png}")
    if summary.rows and not ok:  # nothing to show for it: not a success
        first = next((r["error"] for r in summary.rows if r["error"]), "")
        raise SocError(f"{spec.path}: every point failed (first: {first})")
    return 0


@extra_command
def _register(sub: argparse._SubParsersAction) -> None:
    s = add_parser(sub, "sweep", help="run a design-space sweep (resumable) into DIR/results.csv",
                   description="Run every point of SWEEP.yaml not yet in DIR/results.csv.")
    s.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file (base, traces, factors, mode, seed), or a "
                   "bundled sweep name such as paper-pruning")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (rerun the same to resume; "
                   "a new sweep needs a new DIR)")
    s.add_argument("--executor", choices=tuple(EXECUTORS), default=None,
                   help="serial, processes or dask (default: processes; dask with --scheduler)")
    s.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="join an existing Dask cluster (default: a LocalCluster)")
    s.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: cores)")
    s.add_argument("--retry-failed", action="store_true", help="run the points whose rows say error again (default: keep them)")
    s.add_argument("--no-plot", action="store_true", help="do not draw DIR/pareto.png (default: draw it)")
    s.set_defaults(func=cmd_sweep)
