"""report.json (schema soc.report/1): every figure of a run, with units in the key names.

Op convention: one multiply-accumulate is ``ops_per_mac`` ops (2 by default). ``throughput.gops`` counts the
ops the SoC performed (analog scoring + digital exact attention); ``throughput.effective_gops`` counts the ops
of dense exact attention (Q.K and P.V over every valid pair) delivered per second, the figure a user compares
against a dense accelerator. Energy includes static power over the run; ``tops_per_w`` is per on-chip energy
(DRAM excluded, as chip papers report), ``tops_per_w_with_dram`` includes it.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from soc.config.loader import config_to_dict
from soc.config.schema import SocConfig
from soc.dataflow import Shape, dense_best_traffic, dense_traffic

SCHEMA = "soc.report/1"
TRAFFIC_KEYS = ("dram_read_bytes", "dram_write_bytes", "sram_read_bytes", "sram_write_bytes")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def build_report(cfg: SocConfig, trace, shape: Shape, func, stats, *, wall_s: float) -> dict[str, Any]:
    from soc.simulate import dense_config  # local: simulate imports this module

    latency_ns = stats.latency_ns
    blocks = stats.blocks
    counts = stats.counts
    hd = shape.head_dim
    opm = cfg.ops_per_mac

    # --- traffic: measured, and the dense counterfactual from the same demand rule --------------------------
    measured = {
        "dram_read_bytes": counts["dram"].get("read_bytes", 0.0), "dram_write_bytes": counts["dram"].get("write_bytes", 0.0),
        "sram_read_bytes": counts["sram"].get("read_bytes", 0.0), "sram_write_bytes": counts["sram"].get("write_bytes", 0.0),
    }
    dense_cfg = dense_config(cfg)
    dense = dense_traffic(func, dense_cfg, shape, stats.placement)
    dense_best = dense_best_traffic(func, dense_cfg, shape)
    # blocks with statistics of their own (the banked DRAM's row buffers) report them under "memory"
    memory = {name: b.extra_report() for name, b in blocks.items() if hasattr(b, "extra_report")}
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

    # --- ops ---------------------------------------------------------------------------------------------------
    cim_macs = sum(c.get("macs", 0.0) for n, c in counts.items() if n.startswith("cim"))
    dig_macs = sum(c.get("macs", 0.0) for n, c in counts.items() if n.startswith("digital"))
    valid_pairs = float(func.dense_chunks["pairs_valid"].sum())
    dense_ops = opm * 2.0 * valid_pairs * hd
    performed_ops = opm * (cim_macs + dig_macs)
    seconds = latency_ns * 1e-9

    # --- energy ------------------------------------------------------------------------------------------------
    by_block: dict[str, float] = {}
    detail: dict[str, dict[str, float]] = {}
    static_j: dict[str, float] = {}
    for name, block in blocks.items():
        group = name.rstrip("0123456789")
        dyn = {k: v * 1e-12 for k, v in block.dynamic_energy_pj().items()}
        stat = block.static_mw * 1e-3 * seconds
        by_block[group] = by_block.get(group, 0.0) + sum(dyn.values()) + stat
        static_j[group] = static_j.get(group, 0.0) + stat
        d = detail.setdefault(group, {})
        for k, v in dyn.items():
            d[k] = d.get(k, 0.0) + v
        d["static"] = d.get("static", 0.0) + stat
    by_block["other"] = cfg.other_static_mw * 1e-3 * seconds
    static_j["other"] = by_block["other"]
    total_j = sum(by_block.values())
    on_chip_j = total_j - by_block.get("dram", 0.0)
    cim_j = by_block.get("cim", 0.0)
    energy = {
        "total_j": total_j, "on_chip_j": on_chip_j, "by_block": by_block, "static_by_block": static_j,
        "detail": detail, "counts": {name: dict(c) for name, c in counts.items()},
        "tops_per_w": _ratio(performed_ops * 1e-12, on_chip_j),
        "tops_per_w_with_dram": _ratio(performed_ops * 1e-12, total_j),
        "effective_tops_per_w": _ratio(dense_ops * 1e-12, on_chip_j),
        "cim_tops_per_w": _ratio(opm * cim_macs * 1e-12, cim_j),
    }

    # --- area --------------------------------------------------------------------------------------------------
    area_by: dict[str, float] = {}
    for name, block in blocks.items():
        group = name.rstrip("0123456789")
        area_by[group] = area_by.get(group, 0.0) + block.area_mm2
    area_by["other"] = cfg.other_area_mm2
    total_mm2 = sum(area_by.values())
    gops = performed_ops / latency_ns if latency_ns > 0 else 0.0  # ops per ns = GOPS
    cim_gops = opm * cim_macs / latency_ns if latency_ns > 0 else 0.0
    area = {"total_mm2": total_mm2, "by_block": area_by, "gops_per_mm2": _ratio(gops, total_mm2),
            "cim_gops_per_mm2": _ratio(cim_gops, area_by.get("cim", 0.0))}

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

    m = trace.meta
    query_rows = shape.layers * shape.heads * shape.seq_q
    return {
        "schema": SCHEMA,
        "config": config_to_dict(cfg),
        "workload": {"model": m.model, "source": m.source, "seq_len": shape.seq_k, "seq_q": shape.seq_q,
                     "layers": shape.layers, "heads": shape.heads, "kv_heads": m.kv_heads, "head_dim": hd,
                     "causal": m.causal, "trace": getattr(trace, "path", None)},
        "time": {"latency_ns": latency_ns, "cycles": int(round(latency_ns * cfg.digital.clock_ghz)),
                 "clock_ghz": cfg.digital.clock_ghz, "busy_ns": stats.busy_ns},
        "throughput": {"gops": gops, "effective_gops": dense_ops / latency_ns if latency_ns > 0 else 0.0,
                       "queries_per_s": query_rows / seconds if seconds > 0 else 0.0,
                       "ops_performed": performed_ops, "ops_dense_equivalent": dense_ops},
        "pruning": {"kept_fraction": func.accuracy["kept_fraction"], "per_layer": func.per_layer,
                    "rule": cfg.pruning.rule if cfg.cim.enabled else "none",
                    "q_tile_rows": cfg.dataflow.q_tile_rows, "key_tile_keys": stats.key_tile},
        "accuracy": dict(func.accuracy),
        "utilization": utilization,
        "utilization_by_instance": util,
        "traffic": traffic,
        "memory": memory,
        "energy": energy,
        "area": area,
        "sim": {"wall_s": wall_s, "events": stats.events,
                "events_per_s": stats.events / stats.wall_s if stats.wall_s > 0 else 0.0,
                "sim_wall_s": stats.wall_s, "chunks": int(len(func.chunks["layer"])),
                "python": platform.python_version()},
    }


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GB"


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


def _dram(t: dict[str, Any]) -> float:
    return t["dram_read_bytes"] + t["dram_write_bytes"]


def summary_text(r: dict[str, Any]) -> str:
    """A terminal summary a person reads in ten seconds."""
    w, t, p, a, tr, e = r["workload"], r["time"], r["pruning"], r["accuracy"], r["traffic"], r["energy"]
    sav = tr["savings"]
    util = "  ".join(f"{k} {v:.0%}" for k, v in r["utilization"].items())
    f = lambda x, fmt: "n/a" if x is None else format(x, fmt)  # noqa: E731
    lines = [
        f"soc: {r['config']['name']} on {w['model']} ({w['layers']} layers x {w['heads']} heads, "
        f"seq {w['seq_len']}, head_dim {w['head_dim']}{', causal' if w['causal'] else ''})",
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
        f"  energy         {e['total_j'] * 1e6:,.2f} uJ ({e['on_chip_j'] * 1e6:,.2f} uJ on chip), "
        f"{f(e['tops_per_w'], '.2f')} TOPS/W on chip, CIM {f(e['cim_tops_per_w'], '.2f')} TOPS/W",
        f"  area           {r['area']['total_mm2']:.2f} mm2, {f(r['area']['gops_per_mm2'], '.1f')} GOPS/mm2",
        f"  utilization    {util}",
        f"  simulated in   {r['sim']['wall_s']:.2f} s wall, {r['sim']['events']:,} events "
        f"({r['sim']['events_per_s']:,.0f}/s)",
    ]
    return "\n".join(lines)
