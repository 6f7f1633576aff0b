"""The sweep driver: expand the points, skip the finished ones, run the rest, record each as it finishes.

The driver is the only writer of ``DIR``: workers return reports, the driver writes ``points/ID/report.json``
(atomically) and then appends the point's row to ``results.csv``, so a row always has its report beside it.
Progress (points done / total, failures, time per point, ETA) goes to stderr.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from soc import progress as bars
from soc.errors import ConfigError
from soc.io import write_json
from soc.sweep.executors import EXECUTORS, Outcome, Task
from soc.sweep.spec import Point, SweepSpec
from soc.sweep.store import FIXED_AFTER, FIXED_BEFORE, ResultStore, columns_for, read_results, report_metrics


@dataclass
class SweepSummary:
    """What a call to ``run_sweep`` did: ``total`` points, of which ``resumed`` were already in results.csv;
    ``ran`` ran now, ``failed`` of them failed; ``rows`` is results.csv afterwards."""
    total: int
    resumed: int
    ran: int
    failed: int
    wall_s: float
    results_csv: Path
    pareto_png: Path | None
    rows: list[dict[str, str]]


class Progress:
    """``sweep NAME: 12/40 points (3 resumed, 1 failed), 4.1 s/point, ETA 0:01:10`` on stderr; one line per
    finished point, or one line rewritten in place on a terminal."""

    def __init__(self, name: str, total: int, resumed: int, stream: IO[str] | None, failed: int = 0) -> None:
        self.name, self.total, self.resumed, self.stream = name, total, resumed, stream
        self.ran = 0
        self.failed = self.failed_before = failed  # failed points, resumed ones included
        self.t0 = time.perf_counter()
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        if self.tty and bars.active():  # a progress bar shows the same: no second line rewritten in place
            self.stream = None

    def line(self) -> str:
        done = self.resumed + self.ran
        text = f"sweep {self.name}: {done}/{self.total} points ({self.resumed} resumed, {self.failed} failed)"
        if self.ran:
            per = (time.perf_counter() - self.t0) / self.ran
            eta = round(per * (self.total - done))
            text += f", {per:.2f} s/point, ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        return text

    def show(self, final: bool = False) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
        elif not final:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def update(self, outcome: Outcome) -> None:
        self.ran += 1
        self.failed += outcome.status != "ok"
        self.show()


def _base_digest(spec: SweepSpec) -> str:
    from soc.config.loader import config_to_dict, load_config

    text = json.dumps(config_to_dict(load_config(spec.base)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _record_spec(spec: SweepSpec, path: Path, points: int, *, resumed: bool, warn: IO[str] | None) -> None:
    """Write DIR/sweep.json; warn when resumed rows were computed from another base config (point ids
    cover the factor values, the trace and the seed, not the base file's content)."""
    digest = _base_digest(spec)
    if resumed and warn is not None and path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8")).get("base_sha256")
        except (OSError, ValueError):
            before = None
        if before is not None and before != digest:
            warn.write(f"sweep: warning: {spec.base} changed since the finished rows in {path.parent} were "
                       f"computed; they are kept (use another --out to rerun them)\n")
    write_json(path, {**spec.to_dict(), "points": points, "base_sha256": digest})


def _row(point: Point, outcome: Outcome) -> dict[str, Any]:
    row: dict[str, Any] = {"id": point.id, **dict(point.factors), "trace": point.trace.key,
                           "seed": point.seed, "replicate": point.replicate, "status": outcome.status,
                           "error": outcome.error}
    if outcome.report is not None:
        row.update(report_metrics(outcome.report))
    return row


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, executor: str = "processes",
              workers: int | None = None, scheduler: str | None = None, retry_failed: bool = False,
              plot: bool = True, progress: IO[str] | None = sys.stderr, blas_threads: int = 1) -> SweepSummary:
    """Run every point of ``spec`` not yet in ``out_dir/results.csv``; return what was done.

    ``executor``: serial, processes (default; ``workers`` processes, default one per core) or dask (a
    LocalCluster of ``workers`` processes, or the cluster at ``scheduler``). ``retry_failed`` runs the points
    whose rows say ``error`` again (their rows are replaced)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if scheduler is not None and executor != "dask":
        raise ConfigError(f"--scheduler {scheduler}: only meaningful with --executor dask")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: expected an integer >= 1, got {workers}")
    clash = [k for k in spec.factor_keys if k in (*FIXED_BEFORE, *FIXED_AFTER)]
    if clash:
        raise ConfigError(f"{spec.path}: factors.{clash[0]}: a results.csv column of its own; the noise seed "
                          f"of each point comes from the sweep's seed and replicates")
    out = Path(out_dir)
    points = spec.points()
    t0 = time.perf_counter()
    with ResultStore(out, columns_for(spec.factor_keys)) as store:
        done = store.open()
        if retry_failed:
            done = store.drop_failed()
        _record_spec(spec, out / "sweep.json", len(points), resumed=bool(done), warn=progress)
        todo = {p.id: p for p in points if p.id not in done}
        ids = {p.id for p in points}
        prog = Progress(spec.name, len(points), len(points) - len(todo), progress,
                        failed=sum(r["status"] != "ok" for i, r in done.items() if i in ids))
        prog.show()
        tasks = (Task(p.id, spec.base, p.overrides, p.trace, p.seed, blas_threads) for p in todo.values())
        with bars.task(f"sweep {spec.name}", total=len(todo), unit="point") as bar:
            if todo:
                runner = EXECUTORS[executor](workers=workers, scheduler=scheduler, blas_threads=blas_threads)
                runner.workers = min(runner.workers, len(todo))  # no idle processes to start
                for outcome in runner.run(tasks):
                    point = todo[outcome.id]
                    if outcome.report is not None:
                        write_json(out / "points" / point.id / "report.json", outcome.report)
                    store.append(_row(point, outcome))
                    prog.update(outcome)
                    bar.advance()
                    bar.note(f"{prog.failed} failed")
        prog.show(final=True)
    rows = [r for r in read_results(store.path) if r["id"] in ids]
    png = None
    if plot:
        from soc.sweep.plot import plot_pareto
        png = plot_pareto(rows, out / "pareto.png", title=spec.name, warn=progress)
    return SweepSummary(total=len(points), resumed=prog.resumed, ran=prog.ran,
                        failed=prog.failed - prog.failed_before,
                        wall_s=time.perf_counter() - t0, results_csv=store.path, pareto_png=png, rows=rows)
