"""One simulation, end to end: functional pass (numpy) -> timing (SimPy) -> report.

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
from typing import Any

from soc.attention.functional import FunctionalResult, run_functional
from soc.attention.spec import CimQuantSpec, LayerRule, PruningSpec
from soc.config.schema import LayerPruning, PruningConfig, SocConfig
from soc.dataflow import Shape
from soc.errors import ConfigError, TraceError
from soc.recorder import OFF, Recorder
from soc.report import build_report
from soc.system import SimStats, System


@dataclass
class Result:
    """A finished run: the report (report.json as a dict), plus the raw pieces it was built from."""
    report: dict[str, Any]
    functional: FunctionalResult
    stats: SimStats
    config: SocConfig

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
    quant = CimQuantSpec(query_bits=cfg.cim.query_bits, key_bits=cfg.cim.key_bits, full_bits=cfg.cim.full_bits,
                         noise_sigma_lsb=cfg.cim.noise_sigma_lsb)
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
             model_accuracy: bool = True, functional: FunctionalResult | None = None) -> Result:
    """Run ``trace`` on the SoC ``cfg``; ``seed`` (default ``cfg.seed``) drives the analog noise only.

    With ``model_accuracy`` and a trace captured from a model that is installed, the model is re-run with the
    same pruning in every layer and its task metric lands in ``report["accuracy"]["model"]``.
    ``functional`` reuses the functional pass of an earlier run with the same pruning, tiles and seed (configs
    that differ only in timing, e.g. memory hierarchies, prune alike).
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
        cal = load_trace(cfg.pruning.calibration_trace)
        calibration = (cal.q, cal.k)
    spec = pruning_spec(cfg)
    seed = cfg.seed
    need_survivors = system.placement.needs_survivors  # row/cache dataflows: per-query survivor sets
    if functional is not None and need_survivors and functional.survivors is None:
        functional = None
    func = functional if functional is not None else run_functional(
        trace.q, trace.k, trace.v, scale=m.scale, causal=m.causal, query_offset=m.query_offset, pruning=spec,
        q_tile=cfg.dataflow.q_tile_rows, k_tile=system.key_tile, seed=seed, keep_output=keep_output,
        keep_masks=keep_masks, survivors=need_survivors, calibration=calibration)
    stats = system.run(func.chunks, func.survivors)
    report = build_report(cfg, trace, shape, func, stats, wall_s=time.perf_counter() - wall0)
    if model_accuracy:
        from soc.model_accuracy import model_accuracy as evaluate

        task = evaluate(trace, spec, func, seed)
        if task is not None:
            report["accuracy"]["model"] = task
        report["sim"]["wall_s"] = time.perf_counter() - wall0
    return Result(report=report, functional=func, stats=stats, config=cfg)
