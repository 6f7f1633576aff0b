"""report.json (schema soc.report/1): every figure of a run, with units in the key names.

Op convention (``OPS_CONVENTION``, also in ``throughput.ops_convention``): one multiply-accumulate is
``ops_per_mac`` ops (2 by default), counted per kind in ``throughput.ops``: ``cim`` (approximate scoring),
``digital`` (exact attention on kept pairs), ``dense_equivalent`` (dense exact attention). ``throughput.gops``
counts cim + digital; ``effective_gops`` the dense-equivalent ops per second; ``*_by_ops`` give every
efficiency per kind. The paper's SoC figures count cim ops, and so does the terminal summary. Energy includes static power over the run; ``tops_per_w`` is per on-chip energy
(DRAM excluded, as chip papers report), ``tops_per_w_with_dram`` includes it.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import numpy as np

from soc.config.loader import config_to_dict

if TYPE_CHECKING:
    from soc.simulate import Result

SCHEMA = "soc.report/1"
OPS_CONVENTION = ("1 MAC = {opm} ops. cim: the scorer's approximate-score MACs (query_bits x key_bits, one per key "
                  "element per query per scoring pass); digital: the exact MACs of Q.K, P.V and the softmax rescale "
                  "on kept pairs; dense_equivalent: Q.K and P.V over every valid pair (2 x 2 x pairs x head_dim). "
                  "The paper's SoC TOPS/W and GOPS/mm2 count cim ops over the SoC's on-chip energy and die area.")
TRAFFIC_KEYS = ("dram_read_bytes", "dram_write_bytes", "sram_read_bytes", "sram_write_bytes")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def build_report(result: "Result") -> dict[str, Any]:
    """report.json of a finished run: read from the Result, nothing recomputed."""
    if result.stats is None:
        raise ValueError(f"no report: the run failed ({result.error!r})")
    cfg, shape, func, stats = result.config, result.shape, result.functional, result.stats
    wall_s = result.wall_s
    latency_ns = stats.latency_ns
    counts = stats.counts
    hd = shape.head_dim
    opm = cfg.ops_per_mac

    # --- traffic: measured, and the dense counterfactual from the same demand rule --------------------------
    measured = {
        "dram_read_bytes": counts["dram"].get("read_bytes", 0.0), "dram_write_bytes": counts["dram"].get("write_bytes", 0.0),
        "sram_read_bytes": counts["sram"].get("read_bytes", 0.0), "sram_write_bytes": counts["sram"].get("write_bytes", 0.0),
    }
    dense, dense_best = result.dense_traffic, result.dense_best_traffic
    # blocks with statistics of their own (the banked DRAM's row buffers) report them under "memory"
    memory = stats.memory
    # K/V reuse: share of the rows the digital side needed that were already on chip (resident or reuse)
    # (row: a query needs its own kept rows, so a row counts once per query that keeps it)
    needed = float(func.chunks["pairs_kept" if stats.placement.kv == "row" else "union_keys"].sum())
    kv_reuse = 1.0 - stats.kv_rows_fetched / needed if needed > 0 else None
    dram_h = measured["dram_read_bytes"] + measured["dram_write_bytes"]
    sram_h = measured["sram_read_bytes"] + measured["sram_write_bytes"]
    # row/cache: share of the survivor-buffer or cache-tag lookups that found the row on chip
    lookups = getattr(stats, "kv_lookups", 0.0)
    kv_hit = 1.0 - stats.kv_rows_fetched / lookups if stats.placement.kv in ("row", "cache") and lookups else None
    traffic = {**measured, "dense": dense, "dense_best": dense_best, "savings": {
        "dram": _ratio(dense["dram_read_bytes"] + dense["dram_write_bytes"], dram_h),
        "dram_vs_best": _ratio(dense_best["dram_read_bytes"] + dense_best["dram_write_bytes"], dram_h),
        "sram": _ratio(dense["sram_read_bytes"] + dense["sram_write_bytes"], sram_h)},
        "link_bytes": stats.link_bytes, "kv_placement": stats.placement.kv, "kv_reuse_hit_rate": kv_reuse,
        "kv_hit_rate": kv_hit, "kv_lookups": lookups,
        "dram_row_hit_rate": memory.get("dram", {}).get("row_hit_rate"),
        "kmsb_on_chip": stats.placement.msb_on_chip}

    # --- ops: one convention (OPS_CONVENTION), counted per kind ------------------------------------------------
    cim_macs = sum(c.get("macs", 0.0) for n, c in counts.items() if n.startswith("cim"))
    dig_macs = sum(c.get("macs", 0.0) for n, c in counts.items() if n.startswith("digital"))
    valid_pairs = float(shape.layers * shape.heads * np.count_nonzero(func.valid)) if func.valid is not None \
        else float(func.dense_chunks["pairs_valid"].sum())
    ops = {"cim": opm * cim_macs, "digital": opm * dig_macs, "dense_equivalent": opm * 2.0 * valid_pairs * hd}
    dense_ops = ops["dense_equivalent"]
    performed_ops = ops["cim"] + ops["digital"]
    seconds = latency_ns * 1e-9

    # --- energy: every block's own cost rule, read from its result() hook ------------------------------------
    results = stats.results
    by_block: dict[str, float] = {}
    detail: dict[str, dict[str, float]] = {}
    static_j: dict[str, float] = {}
    tech: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        group = name.rstrip("0123456789")
        dyn = {k: v * 1e-12 for k, v in res["energy_pj"].items()}
        stat = res["static_mw"] * 1e-3 * seconds
        by_block[group] = by_block.get(group, 0.0) + sum(dyn.values()) + stat
        static_j[group] = static_j.get(group, 0.0) + stat
        d = detail.setdefault(group, {})
        for k, v in dyn.items():
            d[k] = d.get(k, 0.0) + v
        d["static"] = d.get("static", 0.0) + stat
        if group not in tech:  # instances of one section share one sheet; a user value shows its provenance
            tech[group] = {k: ({**v, "provenance": cfg.provenance[f"{group}.{k}"]}
                               if v["source"] == "user" and f"{group}.{k}" in cfg.provenance else v)
                           for k, v in res["costs"].items()}
    total_j = sum(by_block.values())
    on_chip_j = total_j - by_block.get("dram", 0.0)
    cim_j = by_block.get("cim", 0.0)
    per_w = {k: _ratio(v * 1e-12, on_chip_j) for k, v in ops.items()}
    per_w["performed"] = _ratio(performed_ops * 1e-12, on_chip_j)
    energy = {
        "total_j": total_j, "on_chip_j": on_chip_j, "by_block": by_block, "static_by_block": static_j,
        "detail": detail, "counts": {name: dict(c) for name, c in counts.items()},
        "tops_per_w": per_w["performed"],
        "tops_per_w_with_dram": _ratio(performed_ops * 1e-12, total_j),
        "effective_tops_per_w": per_w["dense_equivalent"],
        "cim_tops_per_w": _ratio(ops["cim"] * 1e-12, cim_j),
        "tops_per_w_by_ops": per_w,
        "cim_energy_per_score_pj": _ratio((cim_j - static_j.get("cim", 0.0)) * 1e12,
                                          sum(c.get("compares", 0.0) for n, c in counts.items() if n.startswith("cim"))),
        "unmodelled": results["other"]["costs"]["static_mw"]["source"],
        "tech": {g: {k: v for k, v in sheet.items() if k != "area_mm2"} for g, sheet in tech.items()},
    }

    # --- area --------------------------------------------------------------------------------------------------
    area_by: dict[str, float] = {}
    for name, res in results.items():
        group = name.rstrip("0123456789")
        area_by[group] = area_by.get(group, 0.0) + res["area_mm2"]
    total_mm2 = sum(area_by.values())
    gops = performed_ops / latency_ns if latency_ns > 0 else 0.0  # ops per ns = GOPS
    gops_by = {k: v / latency_ns if latency_ns > 0 else 0.0 for k, v in ops.items()}
    cim_busy = sum(v for k, v in stats.busy_ns.items() if k.rstrip("0123456789") == "cim")
    area = {"total_mm2": total_mm2, "by_block": area_by, "gops_per_mm2": _ratio(gops, total_mm2),
            "cim_gops_per_mm2": _ratio(gops_by["cim"], area_by.get("cim", 0.0)),
            "gops_per_mm2_by_ops": {**{k: _ratio(v, total_mm2) for k, v in gops_by.items()},
                                    "performed": _ratio(gops, total_mm2)},
            "cim_busy_gops_per_mm2": _ratio(ops["cim"] / cim_busy if cim_busy > 0 else 0.0, area_by.get("cim", 0.0)),
            "tech": {g: {"area_mm2": sheet["area_mm2"]} for g, sheet in tech.items()}}

    # --- utilization -------------------------------------------------------------------------------------------
    util = stats.utilization
    groups: dict[str, list[float]] = {}
    for name, u in util.items():
        if name.startswith("link "):
            continue
        groups.setdefault(name.rstrip("0123456789"), []).append(u)
    utilization = {g: float(np.mean(v)) for g, v in groups.items()}
    links = [u for n, u in util.items() if n.startswith("link ")]
    utilization["links"] = max(links) if links else 0.0

    m = result.trace_meta
    query_rows = shape.layers * shape.heads * shape.seq_q
    return {
        "schema": SCHEMA,
        "config": config_to_dict(cfg),
        "workload": {"model": m.model, "source": m.source, "seq_len": shape.seq_k, "seq_q": shape.seq_q,
                     "layers": shape.layers, "heads": shape.heads, "kv_heads": m.kv_heads, "head_dim": hd,
                     "causal": m.causal, "trace": result.trace_path},
        "time": {"latency_ns": latency_ns, "cycles": int(round(latency_ns * cfg.digital.clock_ghz)),
                 "clock_ghz": cfg.digital.clock_ghz, "busy_ns": stats.busy_ns},
        "throughput": {"gops": gops, "effective_gops": dense_ops / latency_ns if latency_ns > 0 else 0.0,
                       "queries_per_s": query_rows / seconds if seconds > 0 else 0.0,
                       "ops_performed": performed_ops, "ops_dense_equivalent": dense_ops,
                       "ops_convention": OPS_CONVENTION.format(opm=opm), "ops": ops,
                       "gops_by_ops": gops_by},
        "pruning": {"kept_fraction": func.accuracy["kept_fraction"], "per_layer": func.per_layer,
                    "rule": cfg.pruning.rule if cfg.cim.enabled else "none",
                    "q_tile_rows": cfg.dataflow.q_tile_rows, "key_tile_keys": stats.key_tile},
        "accuracy": {**func.accuracy, **({"model": result.model_accuracy} if result.model_accuracy is not None else {})},
        "utilization": utilization,
        "utilization_by_instance": util,
        "traffic": traffic,
        "memory": memory,
        "energy": energy,
        "area": area,
        "tech": stats.tech,
        "sim": {"wall_s": wall_s, "events": stats.events,
                "events_per_s": stats.events / stats.wall_s if stats.wall_s > 0 else 0.0,
                "sim_wall_s": stats.wall_s, "chunks": int(len(func.chunks["layer"])),
                "python": platform.python_version()},
    }


def fmt_bytes(n: float) -> str:
    """Bytes in SI units (1 MB = 10^6 bytes), the one convention of every face (summary, compare, synth)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.2f} {unit}" if abs(v) < 10 else f"{v:.1f} {unit}" if abs(v) < 100 else f"{v:,.0f} {unit}"
    return f"{n:.0f} B"


_fmt_bytes = fmt_bytes


def _model_line(m: dict[str, Any] | None) -> list[str]:
    if not m:
        return []
    if "skipped" in m:
        return [f"  real model     not re-run: {m['skipped']}"]
    if m.get("metric") == "embedding_cosine":
        what = f"sentence-embedding cosine {m['embedding_cosine']:.4f} vs dense"
    else:
        what = (f"perplexity {m['perplexity_pruned']:.2f} vs {m['perplexity_dense']:.2f} dense "
                f"({m['perplexity_change']:+.1%})")
    return [f"  real model     {what} ({m['model']} re-run with this pruning in every layer)"]


def _workload_text(w: dict[str, Any]) -> str:
    """What runs, as the trace says: synthetic or captured, prefill or decode (prompt + generated)."""
    layers = f"{w['layers']} layer{'s' if w['layers'] != 1 else ''}"
    seq_q = w.get("seq_q", w["seq_len"])
    seq = (f"seq {w['seq_len']}" if seq_q == w["seq_len"]
           else f"decode: {w['seq_len'] - seq_q} prompt + {seq_q} generated tokens")
    kind = "synthetic " if w.get("source") == "synthetic" else ""
    return (f"{kind}{w['model']} ({layers} x {w['heads']} heads, {seq}, head_dim {w['head_dim']}"
            f"{', causal' if w['causal'] else ''})")


def _dram(t: dict[str, Any]) -> float:
    return t["dram_read_bytes"] + t["dram_write_bytes"]


def summary_text(r: dict[str, Any]) -> str:
    """A terminal summary a person reads in ten seconds."""
    w, t, p, a, tr, e = r["workload"], r["time"], r["pruning"], r["accuracy"], r["traffic"], r["energy"]
    sav = tr["savings"]
    util = "  ".join(f"{k} {v:.0%}" for k, v in r["utilization"].items())
    f = lambda x, fmt: "n/a" if x is None else format(x, fmt)  # noqa: E731
    cim_ops = r["throughput"]["ops"]["cim"] > 0
    lines = [
        f"soc: {r['config']['name']} on {_workload_text(w)}",
        f"  latency        {t['latency_ns'] / 1e3:,.1f} us ({t['cycles']:,} cycles at {t['clock_ghz']} GHz)",
        f"  throughput     {r['throughput']['effective_gops']:,.1f} effective GOPS "
        f"({r['throughput']['gops']:,.1f} GOPS performed), {r['throughput']['queries_per_s']:,.0f} query rows/s",
        f"  pruning        rule {p['rule']}, kept {p['kept_fraction']:.1%} of pairs",
        f"  accuracy       output rel. error {a['output_rel_err']:.2e}, softmax mass kept {a['mass_kept']:.3f}, "
        f"top-1 agreement {a['top1_agreement']:.3f}",
        *_model_line(a.get("model")),
        f"  DRAM traffic   {_fmt_bytes(_dram(tr))}, K/V {tr['kv_placement']} (savings "
        f"{f(sav['dram'], '.2f')}x vs dense {_fmt_bytes(_dram(tr['dense']))}, dram_vs_best "
        f"{f(sav.get('dram_vs_best'), '.2f')}x vs best dense {_fmt_bytes(_dram(tr['dense_best']))} "
        f"with K/V {tr['dense_best']['kv_placement']})",
        f"  SRAM traffic   {_fmt_bytes(tr['sram_read_bytes'] + tr['sram_write_bytes'])} "
        f"(savings {f(sav['sram'], '.2f')}x)",
        f"  energy         {e['total_j'] * 1e6:,.2f} uJ ({e['on_chip_j'] * 1e6:,.2f} uJ on chip); TOPS/W in the "
        f"paper's convention (CIM scoring ops, 1 MAC = {r['config']['ops_per_mac']} ops): "
        + (f"SoC {e['tops_per_w_by_ops']['cim']:.2f}, CIM core {f(e['cim_tops_per_w'], '.2f')}" if cim_ops
           else "n/a (no CIM ops)"),
        f"  area           {r['area']['total_mm2']:.2f} mm2"
        + (f", SoC {r['area']['gops_per_mm2_by_ops']['cim']:.1f} GOPS/mm2 (CIM scoring ops)" if cim_ops else ""),
        f"  utilization    {util}",
        f"  simulated in   {r['sim']['wall_s']:.2f} s wall, {r['sim']['events']:,} events "
        f"({r['sim']['events_per_s']:,.0f}/s)",
    ]
    return "\n".join(lines)
