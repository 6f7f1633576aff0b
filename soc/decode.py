"""Autoregressive decoding, step by step, on top of one-shot simulations: a prefill, then one step per token.

A decode trace holds a prompt of P tokens and G decode steps: k, v cover all P + G positions; q holds the
queries of the steps (positions P .. P+G-1) and, when the trace was captured that way, the prompt's too
(``query_offset`` 0). Step t (t = 0 .. G-1) feeds the token at position P+t: its K/V row and key MSBs are
appended to the cache, then one query per head (and per sequence of the batch) is scored by the CIM against
the whole cache (keys 0 .. P+t), the survivors' K/V are fetched and attended exactly. The first output token
comes from the prefill (time to first token); each step makes the next one.

Steps are serialized (step t+1's query depends on step t's output through every layer), so each step is its
own simulation: the step's sub-trace (its query rows, keys 0 .. P+t) through the functional pass and a fresh
:class:`~soc.system.System`, whose latency is the step's time per output token. The append is a real transfer
in that run (SRAM -> DRAM: the K/V row to the cache, the key MSBs to the MSB region the next step's array loads
read), contending with the walk. The arrays are time-shared by every head and layer, so a head's key tiles are
rewritten into the array at every step: where the cache exceeds one key tile of the array, its tiles cycle
through it; ``cim_reload_share`` is the share of the arrays' busy time spent rewriting them.

Batch B: B sequences decoded together, stacked as extra heads with their own caches (query head b*H + h reads
kv head b*KV + h // (H/KV), so GQA holds within each sequence). ``run_decode(batch=B)`` replicates a trace's
sequence B times; :func:`synth_decode` draws B different synthetic sequences.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from soc import progress
from soc.attention.functional import run_functional
from soc.config.schema import SocConfig
from soc.dataflow import Shape
from soc.errors import ConfigError, TraceError
from soc.simulate import assemble, dense_config, pruning_spec, shape_of
from soc.system import System
from soc.trace.format import Trace
from soc.trace.decode_meta import check_decode_meta


@dataclass(frozen=True)
class DecodeLayout:
    """Where a decode trace's prompt and steps are: ``prompt`` P tokens, ``steps`` G, ``prefill_rows``: q
    holds the prompt's queries too; ``batch``: sequences stacked as heads in the trace."""
    prompt: int
    steps: int
    prefill_rows: bool
    batch: int = 1
    mode: str = "synthetic"


def decode_layout(trace) -> DecodeLayout | None:
    """The decode layout of ``trace``, or None when it is not a decode trace."""
    m = trace.meta
    where = getattr(trace, "path", None) or "<trace>"
    info = m.extra.get("decode")
    if info is None:
        synth = m.extra.get("synth")
        if isinstance(synth, dict) and synth.get("mode") == "decode" and m.query_offset > 0:
            return DecodeLayout(prompt=m.query_offset, steps=m.seq_len - m.query_offset, prefill_rows=False)
        return None
    info = check_decode_meta(info, m.to_dict(), where)
    return DecodeLayout(prompt=info["prompt_tokens"], steps=info["generated_tokens"],
                        prefill_rows=m.query_offset == 0, batch=info.get("batch", 1), mode=info["mode"])


def _batched(arr: np.ndarray, batch: int) -> np.ndarray:
    """B copies of every head (sequence-major: copy b holds heads b*H .. b*H+H-1)."""
    return arr if batch == 1 else np.concatenate([arr] * batch, axis=1)


def window(trace, layout: DecodeLayout, first: int, rows: int, keys: int, batch: int = 1) -> Trace:
    """The sub-trace of query positions first .. first+rows-1 against keys 0 .. keys-1 (causal)."""
    m = trace.meta
    r0 = first - m.query_offset
    q = _batched(np.asarray(trace.q[:, :, r0:r0 + rows]), batch)
    k = _batched(np.asarray(trace.k[:, :, :keys]), batch)
    v = _batched(np.asarray(trace.v[:, :, :keys]), batch)
    extra = {key: val for key, val in m.extra.items() if key not in ("decode", "token_ids")}
    meta = dataclasses.replace(m, seq_len=keys, query_offset=first, heads=m.heads * batch,
                               kv_heads=m.kv_heads * batch, extra=extra, tokens=m.tokens and keys)
    return Trace(q=q, k=k, v=v, meta=meta, path=getattr(trace, "path", None))


def append_transfers(cfg: SocConfig, shape: Shape, tokens: int) -> tuple[tuple[str, str, float, str], ...]:
    """The cache append of ``tokens`` new positions: K and V rows of every (layer, kv head) to the DRAM cache,
    and, with the CIM on, their key MSBs to the MSB region (one row per kv head: GQA shares it)."""
    rows = shape.layers * shape.kv_heads * tokens
    kv = rows * 2 * shape.head_dim * cfg.dataflow.element_bytes
    out = [("sram", "dram", float(kv), "kv_append")]
    if cfg.cim.enabled:
        out.append(("sram", "dram", rows * shape.head_dim * cfg.cim.key_bits / 8.0, "k_msb_append"))
    return tuple(out)


def _dram_bytes(report: dict) -> float:
    t = report["traffic"]
    return t["dram_read_bytes"] + t["dram_write_bytes"]


def simulate_window(cfg: SocConfig, sub: Trace, *, seed: int, appended: int, dense: bool = True) -> dict:
    """One prefill or step: the hybrid run and (when the CIM is on) the dense run of the same tiles.

    Returns {"hybrid": report, "dense": report or None, "reload_ns", "array_ns" (the CIM arrays' rewrite and
    busy time), "func" (the functional result), "dense_append_bytes"}."""
    wall0 = time.perf_counter()
    shape = shape_of(sub)
    m = sub.meta
    system = System(cfg, shape)
    func = run_functional(sub.q, sub.k, sub.v, scale=m.scale, causal=True, query_offset=m.query_offset,
                          pruning=pruning_spec(cfg), q_tile=cfg.dataflow.q_tile_rows, k_tile=system.key_tile,
                          seed=seed, survivors=system.placement.needs_survivors)
    stats = system.run(func.chunks, append_transfers(cfg, shape, appended), survivors=func.survivors)
    reload_ns = array_ns = 0.0
    if system.cims:  # the arrays' rewrite and busy time, from the run's own demand table
        table = stats.demand
        reload_ns, array_ns = float(table["write_ns"].sum()), float((table["write_ns"] + table["score_ns"]).sum())
    hybrid = assemble(cfg, sub, func, stats, wall0=wall0).report
    dcfg = dense_config(cfg)
    out: dict[str, Any] = {"hybrid": hybrid, "dense": None, "reload_ns": reload_ns, "array_ns": array_ns,
                           "func": func,
                           "dense_append_bytes": sum(a[2] for a in append_transfers(dcfg, shape, appended))}
    if cfg.cim.enabled and dense:
        dsys = System(dcfg, shape)
        dstats = dsys.run(func.dense_chunks, append_transfers(dcfg, shape, appended))
        # only the dense report's time, traffic and energy are read; its tiles keep every valid pair
        dfunc = dataclasses.replace(func, chunks=func.dense_chunks, accuracy={**func.accuracy, "kept_fraction": 1.0})
        out["dense"] = assemble(dcfg, sub, dfunc, dstats, wall0=time.perf_counter()).report
    return out


def _p95(x: list[float]) -> float:
    return float(np.percentile(np.asarray(x), 95)) if x else 0.0


def run_decode(cfg: SocConfig, trace, *, batch: int = 1, steps: int | None = None, seed: int | None = None,
               model_accuracy: bool = True, dense_timing: bool = True) -> dict[str, Any]:
    """Decode ``trace`` step by step on ``cfg``; returns the report of the last step with a ``decode`` section
    (see README, report.json). ``steps`` keeps the first N decode steps; ``batch`` replicates the sequence.
    ``dense_timing=False`` skips the dense SoC's event loop (~20 % of the wall time): its DRAM bytes come from
    the demand rule of the same tiles plus the K/V append, and its time and energy are null."""
    wall0 = time.perf_counter()
    layout = decode_layout(trace)
    if layout is None:
        raise TraceError(f"{getattr(trace, 'path', None) or '<trace>'}: not a decode trace (expected "
                         "meta.decode or a synthetic --mode decode trace)")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch: expected an integer >= 1, got {batch!r}")
    n_steps = layout.steps if steps is None else int(steps)
    if not 1 <= n_steps <= layout.steps:
        raise ConfigError(f"steps: expected 1..{layout.steps} (the trace's decode steps), got {steps!r}")
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    sequences = batch * layout.batch
    P = layout.prompt
    prefill = None
    if layout.prefill_rows:
        with progress.task("decode: prefill", total=1, unit="pass") as bar:
            prefill = simulate_window(cfg, window(trace, layout, 0, P, P, batch), seed=cfg.seed, appended=P,
                                      dense=dense_timing)
            bar.advance()
    per_step: list[dict] = []
    last = None
    with progress.task("decode: steps", total=n_steps, unit="token") as bar:
        for t in range(n_steps):
            # the noise streams of step t are seeded by seed + t: steps draw independent analog noise
            res = simulate_window(cfg, window(trace, layout, P + t, 1, P + t + 1, batch), seed=cfg.seed + t,
                                  appended=1, dense=dense_timing)
            per_step.append(_step_row(t, P, res))
            last = res
            bar.advance()
    section = _decode_section(cfg, layout, sequences, prefill, per_step, last)
    if model_accuracy:
        from soc.decode_accuracy import decode_model_accuracy

        acc = decode_model_accuracy(trace, layout, cfg, prefill["func"] if prefill else None)
        if acc is not None:
            section["accuracy"]["model"] = acc
    # the last step's report, with the workload of the whole decode (P prompt + G generated) and its wall time
    step = last["hybrid"]
    workload = {**step["workload"], "seq_len": P + n_steps, "seq_q": n_steps,
                "trace": getattr(trace, "path", None)}
    return {**step, "workload": workload, "decode": section,
            "sim": {**step["sim"], "wall_s": time.perf_counter() - wall0}}


def _step_row(t: int, prompt: int, res: dict) -> dict:
    h, d = res["hybrid"], res["dense"]
    dense_best = h["traffic"].get("dense_best") or {}
    if not {"dram_read_bytes", "dram_write_bytes"} <= set(dense_best):
        dense_best = {}
    row = {"step": t, "cache_tokens": prompt + t + 1, "latency_ns": h["time"]["latency_ns"],
           "dram_bytes": _dram_bytes(h),
           "energy_j": h["energy"]["total_j"], "dram_energy_j": h["energy"]["by_block"].get("dram", 0.0),
           "kept_fraction": h["pruning"]["kept_fraction"], "output_rel_err": h["accuracy"]["output_rel_err"],
           "top1_agreement": h["accuracy"]["top1_agreement"],
           "pairs_valid": int(res["func"].dense_chunks["pairs_valid"].sum()),
           "pairs_kept": int(res["func"].chunks["pairs_kept"].sum()),
           "reload_ns": res["reload_ns"], "array_ns": res["array_ns"]}
    if d is not None:
        row.update(dense_latency_ns=d["time"]["latency_ns"], dense_dram_bytes=_dram_bytes(d),
                   dense_energy_j=d["energy"]["total_j"], dense_dram_energy_j=d["energy"]["by_block"].get("dram", 0.0))
    elif h["config"]["cim"]["enabled"]:  # no dense event loop: the same tiles' demand rule plus the append
        dense = h["traffic"]["dense"]
        row["dense_dram_bytes"] = dense["dram_read_bytes"] + dense["dram_write_bytes"] + res["dense_append_bytes"]
    if dense_best:
        # the dense-best dataflow's attention traffic plus the K/V append a dense SoC writes
        row["dense_best_dram_bytes"] = (dense_best["dram_read_bytes"] + dense_best["dram_write_bytes"]
                                        + res["dense_append_bytes"])
    return row


def _decode_section(cfg: SocConfig, layout: DecodeLayout, sequences: int, prefill: dict | None,
                    rows: list[dict], last: dict) -> dict[str, Any]:
    lat = [r["latency_ns"] for r in rows]
    mean_ns = float(np.mean(lat))
    per_tok = lambda key: float(np.mean([r[key] for r in rows])) / sequences if key in rows[0] else None  # noqa: E731
    key_tile = last["hybrid"]["pruning"]["key_tile_keys"]
    reload_ns, array_ns = sum(r["reload_ns"] for r in rows), sum(r["array_ns"] for r in rows)
    dense_best = per_tok("dense_best_dram_bytes")
    dense_mean = per_tok("dense_latency_ns")
    section: dict[str, Any] = {
        "prompt_tokens": layout.prompt, "steps": len(rows), "batch": sequences, "mode": layout.mode,
        "prefill_in_trace": layout.prefill_rows,
        "time_to_first_token_ns": prefill["hybrid"]["time"]["latency_ns"] if prefill else None,
        "time_per_output_token_ns": {"mean": mean_ns, "p95": _p95(lat), "min": float(min(lat)),
                                     "max": float(max(lat))},
        "tokens_per_s": sequences * 1e9 / mean_ns if mean_ns > 0 else None,
        "dram_bytes_per_token": {"hybrid": per_tok("dram_bytes"), "dense": per_tok("dense_dram_bytes"),
                                 "dense_best": dense_best,
                                 "dense_best_source": "traffic.dense_best" if dense_best is not None else
                                 "dense (traffic.dense_best absent)"},
        "energy_j_per_token": {"hybrid": per_tok("energy_j"), "dense": per_tok("dense_energy_j")},
        "dram_energy_j_per_token": {"hybrid": per_tok("dram_energy_j"), "dense": per_tok("dense_dram_energy_j")},
        "cim_reload_share": reload_ns / array_ns if array_ns > 0 else None,
        "cim_array_keys": key_tile,
        "cache_exceeds_array_from_tokens": key_tile + 1,
        "accuracy": {"kept_fraction": float(np.mean([r["kept_fraction"] for r in rows])),
                     "output_rel_err": float(np.mean([r["output_rel_err"] for r in rows])),
                     "top1_agreement": float(np.mean([r["top1_agreement"] for r in rows]))},
        "per_step": rows,
    }
    if dense_mean is not None:
        section["dense_tokens_per_s"] = 1e9 / dense_mean if dense_mean > 0 else None
        section["dense_time_per_output_token_ns"] = dense_mean * sequences
    if section["dram_bytes_per_token"]["dense"] is None:
        section["dram_bytes_per_token"]["dense"] = section["dram_bytes_per_token"]["hybrid"]
    if dense_best is None:
        section["dram_bytes_per_token"]["dense_best"] = section["dram_bytes_per_token"]["dense"]
    h, dn = section["dram_bytes_per_token"]["hybrid"], section["dram_bytes_per_token"]["dense"]
    section["dram_savings_per_token"] = dn / h if h else None
    return section


def synth_decode(workload: str, *, prompt: int, generate: int, layers: int | None = None,
                 heads: int | None = None, batch: int = 1, seed: int = 0, prefill: bool = True) -> Trace:
    """A synthetic decode trace sliced from prefill traces of P + G tokens (prompt queries kept, so the
    prefill is simulated too). ``heads`` keeps the first N query heads (and their kv heads), ``batch`` draws B
    sequences (seeds seed .. seed+B-1) stacked as heads; ``prefill=False`` drops the prompt's queries (no
    time to first token, a smaller trace). Longer contexts than the workload's
    ``max_positions`` are allowed: the generator's positional periods reach 32K tokens."""
    from soc.trace.synth import synth_trace
    from soc.trace.workload import load_workload

    spec = load_workload(workload)
    total = prompt + generate
    group = spec.heads // spec.kv_heads
    h = spec.heads if heads is None else int(heads)
    if not 1 <= h <= spec.heads or h % group:
        raise ConfigError(f"heads: expected a multiple of {group} in [{group}, {spec.heads}], got {heads!r}")
    spec = dataclasses.replace(spec, heads=h, kv_heads=h // group, max_positions=max(spec.max_positions, total))
    parts = [synth_trace(spec, seq_len=total, layers=layers, seed=seed + b) for b in range(batch)]
    q = np.concatenate([p.q[:, :, 0 if prefill else prompt:] for p in parts], axis=1)
    k = np.concatenate([p.k for p in parts], axis=1)
    v = np.concatenate([p.v for p in parts], axis=1)
    m = parts[0].meta
    extra = dict(m.extra)
    extra["decode"] = {"prompt_tokens": int(prompt), "generated_tokens": int(generate), "mode": "synthetic",
                       "batch": int(batch)}
    meta = dataclasses.replace(m, heads=h * batch, kv_heads=spec.kv_heads * batch, extra=extra,
                               query_offset=0 if prefill else prompt)
    return Trace(q=q, k=k, v=v, meta=meta)


def decode_summary(r: dict[str, Any]) -> str:
    """The per-token lines of the terminal summary."""
    d = r["decode"]
    f = lambda x, fmt: "n/a" if x is None else format(x, fmt)  # noqa: E731
    tp = d["time_per_output_token_ns"]
    b = d["dram_bytes_per_token"]
    e = d["energy_j_per_token"]
    ttft = d["time_to_first_token_ns"]
    acc = d["accuracy"]
    lines = [
        f"  decode         prompt {d['prompt_tokens']} tokens, {d['steps']} steps, batch {d['batch']} "
        f"({d['mode']}); cache {d['prompt_tokens'] + 1} -> {d['prompt_tokens'] + d['steps']} tokens",
        f"  first token    {'not simulated (the trace holds no prompt queries)' if ttft is None else f'{ttft / 1e3:,.1f} us'}",
        f"  per token      {tp['mean'] / 1e3:,.2f} us mean, {tp['p95'] / 1e3:,.2f} us p95; "
        f"{f(d['tokens_per_s'], ',.0f')} tokens/s (dense {f(d.get('dense_tokens_per_s'), ',.0f')})",
        f"  DRAM / token   {f(b['hybrid'] and b['hybrid'] / 1024, ',.1f')} KB (dense "
        f"{f(b['dense'] and b['dense'] / 1024, ',.1f')} KB, dense_best {f(b['dense_best'] and b['dense_best'] / 1024, ',.1f')} KB;"
        f" savings {f(d['dram_savings_per_token'], '.2f')}x)",
        f"  energy / token {f(e['hybrid'] and e['hybrid'] * 1e6, ',.3f')} uJ (dense {f(e['dense'] and e['dense'] * 1e6, ',.3f')} uJ)",
        f"  CIM reload     {f(d['cim_reload_share'], '.0%')} of array time rewriting key tiles "
        f"(array holds {d['cim_array_keys']} keys)",
        f"  step accuracy  kept {acc['kept_fraction']:.1%}, output rel. error {acc['output_rel_err']:.2e}",
    ]
    model = acc.get("model")
    if model and "skipped" not in model:
        lines.append(f"  continuation   next-token agreement {model['next_token_agreement']:.3f}, perplexity "
                     f"{model['perplexity_pruned']:.2f} vs {model['perplexity_dense']:.2f} dense")
    elif model:
        lines.append(f"  continuation   not evaluated: {model['skipped']}")
    return "\n".join(lines)


def total_pairs(prompt: int, steps: int) -> int:
    """Valid (query, key) pairs of G steps after P prompt tokens, per head: sum of P+t+1 for t < G."""
    return steps * prompt + steps * (steps + 1) // 2


__all__ = ["DecodeLayout", "decode_layout", "run_decode", "synth_decode", "decode_summary", "window",
           "append_transfers", "simulate_window", "total_pairs"]
