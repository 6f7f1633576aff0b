"""One run, layer by layer: each layer of the model is its own timing run, and the runs merge into one SimStats.

Why per layer. In a transformer, layer L+1's attention cannot start before layer L's output exists, and the FFN
between them (not modelled) streams its own weights through DRAM, evicting the row buffers. So each layer runs
on a fresh System from t = 0 (empty FIFOs and token buffers, idle ports, precharged DRAM banks), and the model's
latency is the sum of the layers' latencies. Counters, bytes, busy times, energies and events add; utilization
is total busy time over total time; the token buffer's peak is the largest; DRAM row hits, misses and conflicts
add as counts (the banked DRAM's own ``extra_report`` recomputes its rates from the merged counts).

Because layers are independent, they can run anywhere: ``simulate(..., workers=N)`` (local processes) or
``scheduler=ADDRESS`` (an existing Dask cluster) sends one layer per task; a worker opens the trace by path
(memory-mapped), runs the functional pass on that layer and its timing run, and returns the layer's chunk table
and statistics (no trace array is pickled). The serial run merges the same per-layer pieces in the same order,
so its report is identical to a sharded one by construction (``sim`` aside).

Memory. A layer's demand table (~0.2 KB a tile, measured) lives only through its own timing run: the merge
adds the layers' sums (K/V rows fetched, lookups) and keeps no whole-run table unless something will read it
per tile (a timeline, or a caller's ``keep_demand``). So a whole-model replay's peak is one layer's timing
table, not the model's (``Result.demand`` rebuilds the whole table on first use, for the few callers that want it).
"""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from soc import progress
from soc.attention.functional import FunctionalResult, run_functional
from soc.attention.metrics import AccuracyTally
from soc.attention.spec import PruningSpec
from soc.config.schema import SocConfig
from soc.dataflow import Shape
from soc.errors import ConfigError
from soc.recorder import OFF, Recorder
from soc.system import SimStats, System

__all__ = ["run_layers", "merge_stats", "merge_functional", "run_sharded", "layer_slices"]


# --- the split ----------------------------------------------------------------------------------------------
def layer_slices(chunks: dict[str, np.ndarray]) -> list[tuple[int, slice]]:
    """(layer, rows) of each layer present in a chunk table (rows are in layer order, so each is a slice)."""
    layer = chunks["layer"]
    present = np.unique(layer)
    starts = np.searchsorted(layer, present, side="left")
    ends = np.searchsorted(layer, present, side="right")
    return [(int(x), slice(int(a), int(b))) for x, a, b in zip(present, starts, ends)]


class _Shifted(Recorder):
    """A recorder whose spans and counters land ``offset_ns`` later: a layer's timeline after the layers before."""

    def __init__(self, base: Recorder, offset_ns: float) -> None:
        super().__init__(base.sink)
        self.base, self.offset_ns = base, offset_ns

    def span_fn(self, track: str):
        fn, off = self.base.span_fn(track), self.offset_ns
        return None if fn is None else (lambda s, e, name, args: fn(s + off, e + off, name, args))

    def counter_fn(self, track: str):
        fn, off = self.base.counter_fn(track), self.offset_ns
        return None if fn is None else (lambda t, value: fn(t + off, value))


def _layer_stats(cfg: SocConfig, shape: Shape, chunks: dict[str, np.ndarray], recorder: Recorder = OFF,
                 appends: tuple = (), bar: progress.Task | None = None,
                 survivors: dict[str, np.ndarray] | None = None, keep_demand: bool = False) -> SimStats:
    """One layer's timing run on a fresh System (``chunks``: that layer's rows; ``survivors``: that layer's).
    ``keep_demand``: the serial run keeps the layer's demand table for the merge; a worker does not send it."""
    return System(cfg, shape, recorder).run(chunks, appends, survivors=survivors, bar=bar).portable(keep_demand)


def run_layers(cfg: SocConfig, shape: Shape, chunks: dict[str, np.ndarray], recorder: Recorder = OFF,
               appends: tuple = (), survivors: dict[str, np.ndarray] | None = None,
               keep_demand: bool = False) -> SimStats:
    """The serial timing of a chunk table: one fresh System per layer, merged (``appends`` ride with the first
    layer). With a timeline, layer L's spans are shifted by the latencies of the layers before it.
    The merged stats carry the whole run's demand table only with a timeline (its energy counter reads it per
    tile) or ``keep_demand``; otherwise each layer's table is dropped after its run."""
    keep_demand = keep_demand or recorder.sink is not None
    parts: list[SimStats] = []
    offset = 0.0
    layers = layer_slices(chunks)
    with progress.task("event loop", total=len(chunks["layer"]), unit="tile") as bar:
        for i, (_, rows) in enumerate(layers):  # one step per layer
            bar.note(f"layer {i + 1}/{len(layers)}")
            rec = recorder if recorder.sink is None or offset == 0.0 else _Shifted(recorder, offset)
            mine = None if survivors is None else {k: v[i:i + 1] for k, v in survivors.items()}
            part = _layer_stats(cfg, shape, {k: v[rows] for k, v in chunks.items()}, rec,
                                appends if i == 0 else (), bar, mine, keep_demand=keep_demand)
            parts.append(part)
            offset += part.latency_ns
            bar.advance(rows.stop - rows.start)
    return merge_stats(cfg, shape, parts, chunks, survivors, keep_demand=keep_demand)


# --- the merge ----------------------------------------------------------------------------------------------
_ADD = ("busy_ns",)
_ADD_EACH = ("counts", "energy_pj", "link_bytes")
_MAX = ("peak_entries",)


def _add(dicts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _merge_result(name: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A block's ``result()`` over consecutive layers: busy time, counts, energy and link bytes add, the peak is
    the largest; every other figure (kind, cost sheet, area, leakage) must be the same in every layer."""
    out = dict(parts[0])
    for key in parts[0]:
        if key in _ADD:
            out[key] = sum(p[key] for p in parts)
        elif key in _ADD_EACH:
            out[key] = _add([p[key] for p in parts])
        elif key in _MAX:
            out[key] = max(p[key] for p in parts)
        elif any(p[key] != parts[0][key] for p in parts[1:]):
            raise ValueError(f"merge: result {name}.{key} differs between layers and has no merge rule")
    return out


def merge_stats(cfg: SocConfig, shape: Shape, parts: list[SimStats], chunks: dict[str, np.ndarray],
                survivors: dict[str, np.ndarray] | None = None, keep_demand: bool = False) -> SimStats:
    """One SimStats from the per-layer runs, in layer order (the serial and the sharded run call this alike).

    The merged statistics stand on the blocks of an unrun System whose clock reads the total latency and whose
    counters and ports hold the merged totals, so a block's own hooks (``extra_report``: DRAM row-hit rate,
    achieved bandwidth) compute the whole run's figures. ``keep_demand``: the merged stats carry the whole
    chunk table's demand table (the parts' own tables concatenated, or computed once when the parts sent none);
    otherwise none, and the K/V rows fetched are the parts' sums (whole row counts: exact in any order)."""
    if not parts:
        raise ValueError("merge: no layer ran")
    latency = sum(p.latency_ns for p in parts)
    probe = System(cfg, shape, OFF, initial_ns=latency)
    first = parts[0]
    busy = _add([p.busy_ns for p in parts])
    counts = {name: _add([p.counts[name] for p in parts]) for name in first.counts}
    util = {}
    for name in first.utilization:
        b = busy[name[len("link "):] if name.startswith("link ") else name]
        util[name] = b / latency if latency > 0 else 0.0
    link_bytes = _add([p.link_bytes for p in parts])
    blocks = {**probe.blocks, "interconnect": probe.net}
    for name, block in blocks.items():  # the merged totals, for the blocks' own hooks
        block.counts = dict(counts.get(name, {}))
        for port in block.ports:
            port.busy_ns = busy.get(port.name, 0.0)
    probe.net.link_bytes = {hop: link_bytes[f"{hop[0]}->{hop[1]}"] for hop in probe.net.link_bytes}
    for buf in probe.buffers:
        buf.peak = max(p.results[buf.name].get("peak_entries", 0) for p in parts)
    demand: dict[str, np.ndarray] = {}
    if keep_demand and all(p.demand for p in parts):  # the layers' own tables, in layer order
        demand = {k: np.concatenate([p.demand[k] for p in parts]) for k in first.demand}
    elif keep_demand:  # a sharded run's workers send no table: the driver computes it once
        demand = probe.timing_table(chunks, survivors)
    for p in parts:
        p.demand = {}
    return SimStats(
        latency_ns=latency, events=sum(p.events for p in parts), wall_s=sum(p.wall_s for p in parts),
        cpu_s=sum(p.cpu_s for p in parts),
        placement=first.placement, key_tile=first.key_tile, blocks=blocks, utilization=util, busy_ns=busy,
        counts=counts, link_bytes=link_bytes, token_buffer_peak=max(p.token_buffer_peak for p in parts),
        kv_rows_fetched=sum(p.kv_rows_fetched for p in parts), kv_lookups=sum(p.kv_lookups for p in parts),
        demand=demand, pairs=first.pairs,
        results={name: _merge_result(name, [p.results[name] for p in parts]) for name in first.results},
        tech=first.tech,
        memory={name: blocks[name].extra_report() for name in first.memory},  # type: ignore[attr-defined]
        layers=sum(p.layers for p in parts))


def merge_functional(parts: list[FunctionalResult]) -> FunctionalResult:
    """One functional result from passes over disjoint layers, given in layer order: tables concatenate, the
    accuracy counters merge per layer (so the trace-wide figures sum in the same order as one pass's)."""
    tally = AccuracyTally()
    for p in parts:
        if p.tally is None:
            raise ValueError("merge: a functional part without its accuracy tally")
        tally.layers.update(p.tally.layers)
    cat = lambda tables: {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}  # noqa: E731
    first = parts[0]
    surv = None
    if all(p.survivors is not None for p in parts):
        surv = {k: np.concatenate([p.survivors[k] for p in parts]) for k in first.survivors}
    ids = tuple(i for p in parts for i in (p.layer_ids or range(p.layers)))
    return FunctionalResult(chunks=cat([p.chunks for p in parts]), dense_group=first.dense_group,
                            layers=len(ids), heads=first.heads, accuracy=tally.as_dict(),
                            per_layer=[i for p in parts for i in p.per_layer], survivors=surv, valid=first.valid,
                            group=first.group, tally=tally, layer_ids=ids)


# --- the sharded run ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerTask:
    """What a worker needs for one layer: small and picklable (the trace travels as its path)."""
    cfg: SocConfig
    spec: PruningSpec
    shape: Shape
    trace_path: str
    layer: int
    blas_threads: int = 1  # the driver's BLAS threads: the worker computes as the serial run would


@functools.lru_cache(maxsize=2)
def _open(path: str):
    from soc.trace import load_trace
    # the driver scanned the values when it opened the same files; the layer's own check still runs
    return load_trace(path, mmap=True, scan_values=False)


def run_layer(task: LayerTask) -> tuple[int, FunctionalResult, SimStats]:
    """A worker's job: the functional pass and the timing run of one layer, at the driver's BLAS threads (a
    matrix product's last bits depend on the thread count; the serial run's must be reproduced)."""
    from threadpoolctl import threadpool_limits

    cfg, shape = task.cfg, task.shape
    with threadpool_limits(limits=task.blas_threads, user_api="blas"):
        trace = _open(task.trace_path)
        m = trace.meta
        calibration = None
        if cfg.pruning.calibration_trace:
            from soc.config.loader import calibration_trace_path

            cal = _open(str(calibration_trace_path(cfg.pruning.calibration_trace)))
            calibration = (cal.q, cal.k)
        system = System(cfg, shape)
        func = run_functional(trace.q, trace.k, trace.v, scale=m.scale, causal=m.causal, query_offset=m.query_offset,
                              pruning=task.spec, q_tile=cfg.dataflow.q_tile_rows, k_tile=system.key_tile,
                              seed=cfg.seed, calibration=calibration, layers=[task.layer],
                              survivors=system.placement.needs_survivors)
        stats = _layer_stats(cfg, shape, func.chunks, survivors=func.survivors)
    return task.layer, func, stats


def _local(workers: int) -> Callable[[list[LayerTask]], Iterator]:
    def run(tasks: list[LayerTask]) -> Iterator:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds threads and mapped files
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_layer, t) for t in tasks]
            try:
                for fut in as_completed(futures):
                    yield fut.result()
            finally:  # an error or an interrupt: drop the layers not started
                for fut in futures:
                    fut.cancel()
    return run


def _dask(scheduler: str) -> Callable[[list[LayerTask]], Iterator]:
    def run(tasks: list[LayerTask]) -> Iterator:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise ConfigError("--scheduler: needs the dask extra (pip install -e '.[dask]')") from None
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler {scheduler}: cannot reach a Dask scheduler "
                              f"({' '.join(str(exc).split()) or type(exc).__name__})") from None
        try:
            futures = client.map(run_layer, tasks, pure=False)
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            client.close()
    return run


def _blas_threads() -> int:
    """The BLAS threads this process computes with now (1 when no BLAS library reports)."""
    from threadpoolctl import threadpool_info

    return min((int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"), default=1)


def run_sharded(cfg: SocConfig, trace, shape: Shape, spec: PruningSpec, *, workers: int | None = None,
                scheduler: str | None = None) -> tuple[FunctionalResult, SimStats]:
    """The functional pass and the timing of every layer on ``workers`` local processes or the Dask cluster at
    ``scheduler``, merged as the serial run merges them."""
    path = getattr(trace, "path", None)
    if path is None:
        raise ConfigError("workers: a sharded run opens the trace by path in every worker; load it from a file")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers: expected an integer >= 1, got {workers!r}")
    tasks = [LayerTask(cfg, spec, shape, str(path), layer, _blas_threads()) for layer in range(shape.layers)]
    run = _dask(scheduler) if scheduler is not None else _local(workers or 1)
    done: dict[int, tuple[FunctionalResult, SimStats]] = {}
    with progress.task("layers", total=len(tasks), unit="layer") as bar:
        for layer, func, stats in run(tasks):
            done[layer] = (func, stats)
            bar.advance()
    order = sorted(done)
    func = merge_functional([done[k][0] for k in order])
    return func, merge_stats(cfg, shape, [done[k][1] for k in order], func.chunks, func.survivors)
