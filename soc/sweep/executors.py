"""Where design points run: in this process, in local worker processes, or on a Dask cluster.

Every executor runs the same worker function, ``run_point``, on a small ``Task`` (config path, overrides, a
trace reference, a seed): workers load or synthesize the trace themselves (and keep the last two in memory),
so no large array ever crosses a process boundary or the Dask scheduler; only the report (a few KB) comes
back.
An executor yields ``Outcome``s as points finish, in any order, keeping at most a small window of points in
flight so that an interrupt or a lost worker costs little. A point that raises becomes an ``error`` outcome;
the sweep goes on.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import socket
import time
import traceback
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from soc.errors import SocError
from soc.sweep.spec import TraceRef

# One BLAS thread per worker process: the workers already fill the cores, and OpenBLAS's threaded path stalls
# for tens of ms per call on a shared core (measured in soc/trace/synth.py). Dask's nanny sets the same.
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Task:
    """What a worker needs to run one point; small and picklable."""
    id: str
    base: str
    overrides: tuple[str, ...]
    trace: TraceRef
    seed: int
    blas_threads: int = 1  # numpy's BLAS threads while this point runs (the same in every executor)


@dataclass
class Outcome:
    """A finished point: ``status`` is ``ok`` (with the report) or ``error`` (with a one-line reason)."""
    id: str
    status: str
    error: str = ""
    report: dict[str, Any] | None = None
    wall_s: float = 0.0
    worker: str = ""


@functools.lru_cache(maxsize=2)  # points come grouped by trace: one load per trace per worker
def _trace(ref: TraceRef):
    if ref.path is not None:
        from soc.trace import load_trace
        return load_trace(ref.path, mmap=True)
    from soc.trace import synth_trace
    args = dict(ref.synth or ())
    return synth_trace(args.pop("workload"), **args)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    if isinstance(exc, SocError):
        return f"{type(exc).__name__}: {text}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {text}{where}"


def run_point(task: Task) -> Outcome:
    """Load the config and the trace, simulate, return the report; any exception becomes an error outcome."""
    from soc.config import load_config
    from soc.simulate import simulate

    t0 = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        cfg = load_config(task.base, task.overrides)
        with _blas_limit(task.blas_threads):
            result = simulate(cfg, _trace(task.trace), seed=task.seed)
        return Outcome(task.id, "ok", report=result.report, wall_s=time.perf_counter() - t0, worker=worker)
    except Exception as exc:  # a failing point is recorded and the sweep goes on
        return Outcome(task.id, "error", error=_one_line(exc), wall_s=time.perf_counter() - t0, worker=worker)


@contextlib.contextmanager
def _blas_limit(n: int) -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


# --- executors ----------------------------------------------------------------------------------------------
EXECUTORS: dict[str, type] = {}


def executor(name: str):
    def register(cls: type) -> type:
        EXECUTORS[name] = cls
        cls.name = name
        return cls
    return register


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@executor("serial")
class SerialExecutor:
    """Points one after another in this process: the reference the parallel executors must match."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, blas_threads: int = 1) -> None:
        self.workers = 1

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        for task in tasks:
            yield run_point(task)


def _worker_init(driver: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops the workers
    _watch_parent(driver if driver is not None else os.getppid())


def _watch_parent(parent: int) -> None:
    """A worker whose driver died (kill -9, SIGTERM) exits within half a second instead of holding its pipes
    and a core: the pool cannot tell it, since nobody is left to."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:  # the driver's pid is passed in: it may be gone before this starts
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="soc-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _single_blas_thread(n: int = 1) -> Iterator[None]:
    """Spawned children inherit os.environ at spawn time: set the BLAS thread count only for them."""
    saved = {k: os.environ.get(k) for k in _BLAS_ENV}
    for key in _BLAS_ENV:
        os.environ[key] = str(n)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@executor("processes")
class ProcessExecutor:
    """One spawned worker process per core (default). A worker that dies (killed, out of memory) breaks the
    pool and every point in flight with it; those points are then rerun one at a time on a fresh pool, so the
    one that kills its worker while running alone is recorded as failed and the others finish."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, blas_threads: int = 1) -> None:
        self.workers = workers or default_workers()
        self.blas_threads = blas_threads
        self.fn = run_point  # what a worker runs on a task (a module-level function: workers import it)

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(),))

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        suspects: deque[Task] = deque()  # in flight when a worker died: rerun alone
        finished = lone_deaths = 0
        source = iter(tasks)
        pool = None
        inflight: dict[Any, Task] = {}
        try:
            with _single_blas_thread(self.blas_threads):  # workers spawn lazily, on submit: keep the setting while submitting
                while True:
                    alone = bool(suspects)
                    while len(inflight) < (1 if alone else self.workers):
                        task = suspects.popleft() if alone else next(source, None)
                        if task is None:
                            break
                        pool = pool or self._pool()
                        inflight[pool.submit(self.fn, task)] = task
                    if not inflight:
                        return
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    broken = False
                    for fut in done:
                        task = inflight.pop(fut)
                        try:
                            outcome = fut.result()
                            finished += 1
                        except BrokenProcessPool:
                            broken = True
                            if not alone:
                                suspects.append(task)
                                continue
                            lone_deaths += 1
                            if lone_deaths >= 2 and not finished:  # not the points: the workers cannot start
                                raise SocError("--executor processes: worker processes die before finishing "
                                               "any point; run with --executor serial to see why") from None
                            outcome = Outcome(task.id, "error", error="the worker process died running this "
                                              "point alone (killed, or out of memory?)")
                        yield outcome
                    if broken:  # the other points in flight fail with the pool: suspects too
                        suspects.extend(inflight.values())
                        inflight.clear()
                        pool.shutdown(wait=True, cancel_futures=True)
                        pool = None
        finally:
            if pool is not None:
                if inflight:  # interrupted: do not wait for the points in flight
                    for proc in list(getattr(pool, "_processes", {}).values()):
                        proc.terminate()
                pool.shutdown(wait=True, cancel_futures=True)


def _probe() -> str:
    """Run on each Dask worker before the sweep: it unpickles only if the worker can import soc."""
    import soc
    return soc.__version__


@executor("dask")
class DaskExecutor:
    """Dask distributed: a LocalCluster of ``workers`` single-threaded processes, or an existing cluster at
    ``scheduler`` (tcp://HOST:PORT) whose workers have soc installed and see the trace paths."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, blas_threads: int = 1) -> None:
        self.workers = workers or default_workers()
        self.scheduler = scheduler

    def _connect(self):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise SocError("--executor dask: needs the dask extra "
                           "(pip install -e '.[dask]' in the soc checkout)") from None
        if self.scheduler is None:
            cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=50)
            return Client(cluster), cluster
        try:
            client = Client(self.scheduler, timeout="20s")
            client.wait_for_workers(1, timeout=60)
        except (OSError, TimeoutError) as exc:
            raise SocError(f"--scheduler {self.scheduler}: cannot reach a Dask cluster with workers "
                           f"({' '.join(str(exc).split()) or type(exc).__name__})") from None
        try:
            client.run(_probe)
        except Exception as exc:
            client.close()
            raise SocError(f"--scheduler {self.scheduler}: a worker cannot import soc ({_one_line(exc)}); "
                           f"install soc on every worker") from None
        return client, None

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        source = iter(tasks)
        first = next(source, None)
        if first is None:
            return
        from distributed import as_completed

        client, cluster = self._connect()
        window = 2 * max(1, sum(client.nthreads().values()))  # keep every worker thread fed, no more
        tag = uuid.uuid4().hex[:8]  # fresh keys: a scheduler may still remember another session's
        pending = {}
        try:
            ac = as_completed()
            for task in [first, *(t for _, t in zip(range(window - 1), source, strict=False))]:
                fut = client.submit(run_point, task, key=f"soc-point-{task.id}-{tag}", pure=False)
                pending[fut.key] = task
                ac.add(fut)
            for fut in ac:
                task = pending.pop(fut.key)
                try:
                    outcome = fut.result()
                except Exception as exc:  # KilledWorker: the point took down its worker too often
                    outcome = Outcome(task.id, "error", error=_one_line(exc))
                fut.release()
                nxt = next(source, None)
                if nxt is not None:
                    new = client.submit(run_point, nxt, key=f"soc-point-{nxt.id}-{tag}", pure=False)
                    pending[new.key] = nxt
                    ac.add(new)
                yield outcome
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
