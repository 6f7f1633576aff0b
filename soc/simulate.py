"""One simulation, end to end: functional pass (numpy) -> timing (SimPy) -> a ``Result``.

The ``Result`` is assembled here and only here: the resolved config, the dense baselines' traffic (each
computed once), every block's own result, the functional metrics, end time,
wall time, and the exception if one happened. ``soc/faces/report.py`` turns it into report.json.

    import soc
    cfg = soc.load_config("configs/hybrid65nm.yaml", ["pruning.target_kept_fraction=0.3"])
    trace = soc.load_trace("traces/minilm-l6-....npz")
    result = soc.simulate(cfg, trace)
    result.report["time"]["latency_ns"], result.report["pruning"]["kept_fraction"]
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from soc.attention.functional import FunctionalResult, run_functional
from soc.attention.spec import CimQuantSpec, LayerRule, PruningSpec
from soc.config.loader import calibration_trace_path
from soc.config.schema import LayerPruning, PruningConfig, SocConfig
from soc.dataflow import Shape, dense_best_traffic, dense_traffic
from soc.errors import ConfigError, TraceError
from soc.recorder import OFF, Recorder
from soc.shard import run_layers, run_sharded
from soc.system import SimStats, System


@dataclass
class Result:
    """A finished run. ``report`` (report.json as a dict) is made from it once, on first use, and never edited.

    ``stats`` holds the blocks, their ``result()`` hooks, end time and events (and the run's demand table with a
    timeline; ``demand`` gives it for every run);
    ``dense_traffic`` (the same SoC and dataflow without pruning) and ``dense_best_traffic`` (the dense SoC at
    the dataflow that minimises its DRAM bytes for the same SRAM) are the two baselines, computed once here.
    """
    config: SocConfig
    shape: Shape
    trace_meta: Any
    trace_path: str | None
    functional: FunctionalResult
    stats: SimStats | None
    dense_traffic: dict[str, float] | None
    dense_best_traffic: dict[str, Any] | None
    model_accuracy: dict[str, Any] | None
    wall_s: float
    error: BaseException | None = None
    baselines_cpu_s: float = 0.0  # CPU time of the two dense baselines (computed once per run, here)

    @cached_property
    def demand(self) -> dict[str, np.ndarray]:
        """The run's demand table, per chunk (``System.timing_table`` of the whole chunk table). A run with a
        timeline carries it in ``stats.demand``; any other keeps no whole-run table (it would be ~0.2 KB a tile:
        gigabytes for a long model), so it is computed here on first use, from the functional pass's chunks
        (the same table: each layer's is its own rows'). Empty when the timing run did not finish."""
        if self.stats is None:
            return {}
        if self.stats.demand:
            return self.stats.demand
        return System(self.config, self.shape).timing_table(self.functional.chunks, self.functional.survivors)

    @property
    def end_ns(self) -> float:
        return self.stats.latency_ns if self.stats is not None else 0.0

    @cached_property
    def report(self) -> dict[str, Any]:
        from soc.faces.report import build_report  # the face that turns a Result into report.json

        return build_report(self)

    def to_dict(self) -> dict[str, Any]:
        return self.report

    def __getitem__(self, key: str) -> Any:
        return self.report[key]


# the fields a per-layer override may set; an unset (None) one inherits the default rule's value
_RULE_FIELDS = ("rule", "target_kept_fraction", "threshold", "threshold_per_head", "margin", "topk_keys",
                "keep_sink_tokens", "keep_recent_tokens")


def _layer_rule(p: PruningConfig | LayerPruning, base: LayerRule | None) -> LayerRule:
    values = {f: getattr(p, f) if getattr(p, f) is not None else getattr(base, f, None) for f in _RULE_FIELDS}
    granularity = getattr(p, "granularity", None) or getattr(base, "granularity", "head")
    return LayerRule(**values, granularity=granularity)


def pruning_spec(cfg: SocConfig) -> PruningSpec:
    """The functional layer's view of the config: the CIM's quantization and each layer's rule."""
    c = cfg.cim
    quant = CimQuantSpec(query_bits=c.query_bits, key_bits=c.key_bits, full_bits=c.full_bits,
                         noise_sigma_lsb=c.noise_sigma_lsb, rounding=c.rounding,
                         noise_fraction_fs=c.noise_fraction_fs, gain_sigma_fraction=c.gain_sigma_fraction,
                         offset_fraction_fs=c.offset_fraction_fs, chip_seed=c.chip_seed,
                         array_rows=c.array_rows, array_cols=c.array_cols, cores=c.count)
    if not cfg.cim.enabled:
        return PruningSpec(default=LayerRule(rule="none"), quant=quant)
    default = _layer_rule(cfg.pruning, None)
    per_layer = tuple((layer, _layer_rule(over, default)) for layer, over in sorted(cfg.pruning.per_layer.items()))
    return PruningSpec(default=default, per_layer=per_layer, quant=quant)


def dense_config(cfg: SocConfig) -> SocConfig:
    """The same SoC without analog pruning: the counterfactual for traffic savings."""
    return dataclasses.replace(cfg, cim=dataclasses.replace(cfg.cim, enabled=False))


def shape_of(trace) -> Shape:
    m = trace.meta
    return Shape(layers=m.layers, heads=m.heads, seq_q=trace.q.shape[2], seq_k=m.seq_len, head_dim=m.head_dim,
                 kv_heads=m.kv_heads)


def simulate(cfg: SocConfig, trace, *, recorder: Recorder = OFF, seed: int | None = None,
             keep_output: bool = False, keep_masks: bool = False, calibration=None,
             model_accuracy: bool = True, functional: FunctionalResult | None = None,
             appends: tuple = (), workers: int | None = None, scheduler: str | None = None) -> Result:
    """Run ``trace`` on the SoC ``cfg``; ``seed`` (default ``cfg.seed``) drives the analog noise only.

    With ``model_accuracy`` and a trace captured from a model that is installed, the model is re-run with the
    same pruning in every layer and its task metric lands in ``result.model_accuracy`` (report
    ``accuracy.model``).
    ``functional`` reuses the functional pass of an earlier run with the same pruning, tiles and seed (configs
    that differ only in timing, e.g. memory hierarchies, prune alike). ``appends`` are extra transfers run
    beside the tile walk (a decode step's K/V append; see ``System.run``), with the first layer.

    Each layer is its own timing run (a fresh System from t = 0: layer L+1 waits for layer L's output) and the
    runs merge into one (soc/shard.py). ``workers`` (local processes) or ``scheduler`` (a Dask cluster's
    address) spread the layers' functional passes and timing runs; the report is the serial one (``sim`` aside).
    """
    wall0 = time.perf_counter()
    if seed is not None:  # the report's resolved config records the seed actually used
        cfg = dataclasses.replace(cfg, seed=seed)
    shape = shape_of(trace)
    m = trace.meta
    per_layer_out = [k for k in cfg.pruning.per_layer if not 0 <= k < shape.layers]
    if per_layer_out:
        raise TraceError(f"pruning.per_layer: layer {per_layer_out[0]} does not exist in a trace of "
                         f"{shape.layers} layers (expected 0..{shape.layers - 1})")
    for where, rule in (("pruning", cfg.pruning), *((f"pruning.per_layer.{k}", v)
                                                    for k, v in cfg.pruning.per_layer.items())):
        if rule.threshold_per_head is not None and len(rule.threshold_per_head) != shape.heads:
            raise ConfigError(f"{where}.threshold_per_head: expected {shape.heads} values (one per head of the "
                              f"trace), got {len(rule.threshold_per_head)}")
    system = System(cfg, shape, recorder)  # elaborate first: a wiring error costs no functional work
    if calibration is None and cfg.pruning.calibration_trace:
        from soc.trace import load_trace
        cal = load_trace(calibration_trace_path(cfg.pruning.calibration_trace))
        calibration = (cal.q, cal.k)
    spec = pruning_spec(cfg)
    seed = cfg.seed
    need_survivors = system.placement.needs_survivors  # row/cache dataflows: per-query survivor sets
    if functional is not None and need_survivors and functional.survivors is None:
        functional = None
    if workers is not None or scheduler is not None:
        return _simulate_sharded(cfg, trace, shape, spec, recorder=recorder, workers=workers, scheduler=scheduler,
                                 other=(keep_output, keep_masks, calibration is not None, functional is not None,
                                        bool(appends)), model_accuracy=model_accuracy, wall0=wall0)
    func = functional if functional is not None else run_functional(
        trace.q, trace.k, trace.v, scale=m.scale, causal=m.causal, query_offset=m.query_offset, pruning=spec,
        q_tile=cfg.dataflow.q_tile_rows, k_tile=system.key_tile, seed=seed, keep_output=keep_output,
        keep_masks=keep_masks, survivors=need_survivors, calibration=calibration)
    try:
        stats = run_layers(cfg, shape, func.chunks, recorder, appends, func.survivors)
    except Exception as exc:  # the partial result travels with the exception
        exc.result = assemble(cfg, trace, func, None, wall0=wall0, error=exc)  # type: ignore[attr-defined]
        raise
    task = None
    if model_accuracy:
        from soc.model_accuracy import model_accuracy as evaluate

        task = evaluate(trace, spec, func, seed)
    return assemble(cfg, trace, func, stats, task=task, wall0=wall0)


def _simulate_sharded(cfg: SocConfig, trace, shape: Shape, spec: PruningSpec, *, recorder: Recorder,
                      workers: int | None, scheduler: str | None, other: tuple, model_accuracy: bool,
                      wall0: float) -> Result:
    if recorder.sink is not None:
        raise ConfigError("workers/scheduler: a timeline needs the serial run (its spans come from this process); "
                          "drop --timeline/--plots or --workers/--scheduler")
    if any(other):
        raise ConfigError("workers/scheduler: keep_output, keep_masks, calibration arrays, a reused functional "
                          "pass and appends need the serial run")
    func, stats = run_sharded(cfg, trace, shape, spec, workers=workers, scheduler=scheduler)
    task = None
    if model_accuracy:
        from soc.model_accuracy import model_accuracy as evaluate

        task = evaluate(trace, spec, func, cfg.seed)
    return assemble(cfg, trace, func, stats, task=task, wall0=wall0)


def assemble(cfg: SocConfig, trace, func: FunctionalResult, stats: SimStats | None, *, task=None,
             wall0: float, error: BaseException | None = None) -> Result:
    """The one place a ``Result`` is made: the run's pieces plus the dense counterfactual's demand table."""
    shape = shape_of(trace)
    dense = best = None
    cpu0 = time.process_time()
    if stats is not None:
        dense_cfg = dense_config(cfg)
        dense = dense_traffic(func, dense_cfg, shape, stats.placement)
        best = dense_best_traffic(func, dense_cfg, shape)
    return Result(config=cfg, shape=shape, trace_meta=trace.meta, trace_path=getattr(trace, "path", None),
                  functional=func, stats=stats, dense_traffic=dense, dense_best_traffic=best, model_accuracy=task,
                  wall_s=time.perf_counter() - wall0, error=error, baselines_cpu_s=time.process_time() - cpu0)
