"""Accuracy a user can trust under the analog core's non-idealities (README "Analog non-idealities").

Every number is held out: the threshold rule takes its per-head references from another text of the same model
(``pruning.calibration_trace``), and the margin rule's per-layer margins are calibrated (``soc calibrate``,
target kept fraction 0.25) on that other text too, then applied unchanged. Each point is a Monte Carlo over chip
instances (``soc.faces.montecarlo``: chip seed and noise seed per instance) with the paper's default fixed pattern
(per-column gain error and comparator offset); only the thermal noise is swept.

    python benchmarks/analog_accuracy.py run minilm-l6       # writes benchmarks/results/analog_minilm-l6.json
    python benchmarks/analog_accuracy.py run smollm2-135m    # (slow: ~40 real-model re-runs)
    python benchmarks/analog_accuracy.py plot                # figures in docs/img/, tables in results/*.md
    python benchmarks/analog_accuracy.py explain             # why noise helps MiniLM under the threshold rule
    python benchmarks/analog_accuracy.py rounding            # floor/round/center at a fixed margin (no model)

The real-model re-runs are costly, so SmolLM2 gets fewer noise points and chips than MiniLM (see SETTINGS).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

import soc
from soc.faces.calibrate import calibrate_margins, with_rows
from soc.faces.montecarlo import monte_carlo

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
#: model -> (evaluated trace, held-out calibration trace, noise points in % of full scale, chips per point)
SETTINGS = {"minilm-l6": ("minilm-l6-lighthouse", "minilm-l6-orchard", (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), 8),
            "smollm2-135m": ("smollm2-135m-bread", "smollm2-135m-river", (0.0, 0.25, 1.0, 2.0), 3)}
BITS = (2, 3, 4, 5, 6, 8)
ROUNDINGS = ("floor", "round", "center")
METRIC = {"minilm-l6": "embedding_cosine", "smollm2-135m": "perplexity_change"}


def _trace(name: str):
    return soc.load_trace(ROOT / "traces" / f"{name}.npz")


def _cim(cfg, **fields):
    return dataclasses.replace(cfg, cim=dataclasses.replace(cfg.cim, **fields))


def rule_configs(base, held_out: str) -> dict:
    """The two rules, each calibrated on the held-out text only."""
    threshold = dataclasses.replace(base, pruning=dataclasses.replace(base.pruning, calibration_trace=held_out))
    rows = calibrate_margins(base, _trace(held_out), target_kept=base.pruning.target_kept_fraction)
    return {"threshold": threshold, "margin": with_rows(base, rows)}


def _point(cfg, trace, chips: int) -> dict:
    out = monte_carlo(cfg, trace, chips=chips)
    return {"bands": out["bands"], "per_chip": out["per_chip"]}


def common_mode(cfg, trace) -> dict:
    """Per-token vs token-mean error of the attention outputs (all layers, heads): the share of the pruning error
    that is the same for every token, i.e. what a mean-pooled sentence embedding keeps."""
    from soc.attention.exact import kv_for_heads, scores, softmax_masked, valid_mask, weighted_sum
    from soc.attention.functional import run_functional
    from soc.simulate import calibration_trace_path, pruning_spec

    m = trace.meta
    cal = soc.load_trace(calibration_trace_path(cfg.pruning.calibration_trace)) \
        if cfg.pruning.calibration_trace else None
    f = run_functional(trace.q, trace.k, trace.v, scale=m.scale, causal=m.causal, query_offset=m.query_offset,
                       pruning=pruning_spec(cfg), q_tile=32, k_tile=128, seed=cfg.seed, keep_output=True,
                       calibration=None if cal is None else (cal.q, cal.k))
    valid = valid_mask(trace.q.shape[2], m.seq_len, m.causal, m.query_offset)
    exact = []
    for layer in range(m.layers):
        q, k, v = (np.asarray(a[layer], np.float32) for a in (trace.q, trace.k, trace.v))
        k, v = kv_for_heads(k, 0, m.heads, m.heads), kv_for_heads(v, 0, m.heads, m.heads)
        exact.append(weighted_sum(softmax_masked(scores(q, k, m.scale), valid), v))
    exact = np.stack(exact)
    err = f.output - exact
    return {"per_token_rel_err": float(np.linalg.norm(err) / np.linalg.norm(exact)),
            "token_mean_rel_err": float(np.linalg.norm(err.mean(2)) / np.linalg.norm(exact.mean(2))),
            "common_mode_share": float((err.mean(2) ** 2).sum() * err.shape[2] / (err ** 2).sum()),
            "empty_rows": f.accuracy["empty_rows"], "mass_kept": f.accuracy["mass_kept"]}


def run(model: str) -> dict:
    evaluated, held_out, noise_points, chips = SETTINGS[model]
    base = soc.load_config(ROOT / "configs" / "hybrid65nm.yaml")
    trace = _trace(evaluated)
    rules = rule_configs(base, held_out)
    t0 = time.perf_counter()
    out: dict = {"model": model, "trace": evaluated, "calibration_trace": held_out, "chips": chips,
                 "default_noise_fraction_fs": base.cim.noise_fraction_fs, "noise": {}, "bits": {}, "rounding": {},
                 "common_mode": {}, "margins": [r.margin for r in rules["margin"].pruning.per_layer.values()]}
    for rule, cfg in rules.items():
        out["noise"][rule] = {}
        for pct in noise_points:
            noisy = _cim(cfg, noise_fraction_fs=pct / 100)
            out["noise"][rule][str(pct)] = _point(noisy, trace, chips)
            if model == "minilm-l6":
                out["common_mode"].setdefault(rule, {})[str(pct)] = common_mode(noisy, trace)
            print(f"{model} noise {rule} {pct}% FS done at {time.perf_counter() - t0:.0f} s", flush=True)
        out["bits"][rule] = {str(b): _point(_cim(cfg, query_bits=b, key_bits=b), trace, 1) for b in BITS}
        print(f"{model} bits {rule} done at {time.perf_counter() - t0:.0f} s", flush=True)
        out["rounding"][rule] = {mode: _point(_cim(cfg, rounding=mode), trace, 1) for mode in ROUNDINGS}
        print(f"{model} rounding {rule} done at {time.perf_counter() - t0:.0f} s", flush=True)
    out["wall_s_loaded_machine"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------- explain (MiniLM)
def explain(noise_fraction_fs: float = 0.02) -> str:
    """Noise helps MiniLM under the threshold rule: where, and why. (1) Per layer, the effective number of keys
    per row (exp of the exact softmax entropy) and the per-token / token-mean error of the attention output
    without and with noise. (2) The real model re-run with the noise in one layer only."""
    from soc.attention.exact import kv_for_heads, scores, softmax_masked, valid_mask, weighted_sum
    from soc.attention.functional import run_functional
    from soc.model_accuracy import keep_fn_for
    from soc.models import evaluate_pruning
    from soc.simulate import pruning_spec

    evaluated, held_out, _, _ = SETTINGS["minilm-l6"]
    base = soc.load_config(ROOT / "configs" / "hybrid65nm.yaml", [f"pruning.calibration_trace={held_out}"])
    trace, cal = _trace(evaluated), _trace(held_out)
    m = trace.meta
    valid = valid_mask(trace.q.shape[2], m.seq_len, m.causal, m.query_offset)
    exact, keys = [], []
    for layer in range(m.layers):
        q, k, v = (np.asarray(a[layer], np.float32) for a in (trace.q, trace.k, trace.v))
        k, v = kv_for_heads(k, 0, m.heads, m.heads), kv_for_heads(v, 0, m.heads, m.heads)
        p = softmax_masked(scores(q, k, m.scale), valid)
        exact.append(weighted_sum(p, v))
        keys.append(float(np.exp(-(p * np.log(np.maximum(p, 1e-30))).sum(-1)).mean()))
    exact = np.stack(exact)
    errs, fns = {}, {}
    for name, nf in (("quiet", 0.0), ("noisy", noise_fraction_fs)):
        cfg = _cim(base, noise_fraction_fs=nf)
        spec = pruning_spec(cfg)
        f = run_functional(trace.q, trace.k, trace.v, scale=m.scale, causal=m.causal, query_offset=m.query_offset,
                           pruning=spec, q_tile=32, k_tile=128, seed=0, keep_output=True,
                           calibration=(cal.q, cal.k))
        err = f.output - exact
        errs[name] = [(np.linalg.norm(err[i]) / np.linalg.norm(exact[i]),
                       np.linalg.norm(err[i].mean(1)) / np.linalg.norm(exact[i].mean(1))) for i in range(m.layers)]
        fns[name] = keep_fn_for(spec, f, scale=m.scale, causal=m.causal, seed=0)

    def cosine(noisy_layers: set) -> float:
        def keep(layer, q, k):
            return fns["noisy" if layer in noisy_layers else "quiet"](layer, q, k)
        return evaluate_pruning(m.to_dict(), keep)["embedding_cosine"]

    pct = f"{100 * noise_fraction_fs:g}% FS"
    lines = [f"MiniLM ({evaluated}), threshold rule calibrated on {held_out}, chip 0; noise {pct} vs none.",
             f"Embedding cosine: no noise {cosine(set()):.4f}, noise in every layer {cosine(set(range(m.layers))):.4f}.",
             "", f"| layer | effective keys per row | per-token error, 0 -> {pct} | token-mean error, 0 -> {pct} "
             "| cosine, noise in this layer only |", "|---:|---:|---|---|---:|"]
    for i in range(m.layers):
        (pq, mq), (pn, mn) = errs["quiet"][i], errs["noisy"][i]
        lines.append(f"| {i} | {keys[i]:.0f} of {m.seq_len} | {pq:.3f} -> {pn:.3f} | {mq:.3f} -> {mn:.3f} | "
                     f"{cosine({i}):.4f} |")
    return "\n".join(lines)


def rounding_at_fixed_margin(margin: float = 6.0) -> str:
    """The three rounding modes under one fixed margin rule (functional pass only): how many keys the same margin
    keeps and how often the true top-1 key survives, with no analog error and with the default ones."""
    lines = [f"Margin {margin:g} in every layer, 4-bit MSBs, chip 0 (functional pass, no model re-run).", "",
             "| trace | analog errors | rounding | kept fraction | top-1 agreement | softmax mass kept |",
             "|---|---|---|---:|---:|---:|"]
    base = soc.load_config(ROOT / "configs" / "hybrid65nm.yaml", ["pruning.rule=margin", f"pruning.margin={margin}",
                                                                  "pruning.keep_sink_tokens=0",
                                                                  "pruning.keep_recent_tokens=0"])
    ideal = _cim(base, noise_fraction_fs=0.0, gain_sigma_fraction=0.0, offset_fraction_fs=0.0)
    for name in ("minilm-l6-lighthouse", "smollm2-135m-bread"):
        trace = _trace(name)
        for label, cfg in (("none", ideal), ("default", base)):
            for mode in ROUNDINGS:
                r = soc.simulate(_cim(cfg, rounding=mode), trace, model_accuracy=False).report
                lines.append(f"| {name} | {label} | {mode} | {r['pruning']['kept_fraction']:.3f} | "
                             f"{r['accuracy']['top1_agreement']:.4f} | {r['accuracy']['mass_kept']:.4f} |")
    return "\n".join(lines) + "\n\n" + signal_range()


def signal_range() -> str:
    """How much of the array's full scale the real dot products use, and what 0.25% FS is in logits."""
    from soc.attention.approx import approx_scores, full_scale_lsb
    from soc.attention.spec import CimQuantSpec

    quant = CimQuantSpec()
    lines = ["| trace | full scale (LSB) | dot product std (LSB, % FS) | row max - row median (LSB) | one LSB "
             "(logits) | 0.25% FS (logits) |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("minilm-l6-lighthouse", "smollm2-135m-bread"):
        trace = _trace(name)
        m = trace.meta
        fs = full_scale_lsb(quant, m.head_dim)
        std, spread, lsb = [], [], []
        for layer in range(m.layers):
            a = approx_scores(np.asarray(trace.q[layer], np.float32), np.asarray(trace.k[layer], np.float32),
                              quant, m.scale)
            units = a.scores / a.score_lsb[:, None, None]
            std.append(units.std())
            spread.append((units.max(-1) - np.median(units, -1)).mean())
            lsb.append(a.score_lsb.mean())
        lines.append(f"| {name} | {fs:.0f} | {np.mean(std):.1f} ({np.mean(std) / fs:.2%}) | {np.mean(spread):.0f} | "
                     f"{np.mean(lsb):.3f} | {0.0025 * fs * np.mean(lsb):.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- plots
def _load() -> dict:
    return {m: json.loads((RESULTS / f"analog_{m}.json").read_text()) for m in SETTINGS
            if (RESULTS / f"analog_{m}.json").exists()}


def _label(model: str) -> str:
    return "embedding cosine (pruned vs dense)" if METRIC[model] == "embedding_cosine" else \
        "perplexity change (pruned vs dense)"


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(data), figsize=(5.2 * len(data), 3.8), squeeze=False)
    for ax, (model, d) in zip(axes[0], data.items()):
        for rule, color in (("threshold", "tab:blue"), ("margin", "tab:orange")):
            pts = d["noise"][rule]
            x = [float(p) for p in pts]
            b = [pts[p]["bands"][METRIC[model]] for p in pts]
            ax.plot(x, [v["mean"] for v in b], "o-", color=color, label=f"{rule} (mean)")
            ax.fill_between(x, [v["p5"] for v in b], [v["p95"] for v in b], color=color, alpha=0.25,
                            label=f"{rule} p5-p95")
        ax.axvline(100 * d["default_noise_fraction_fs"], color="grey", ls=":", label="default noise")
        ax.set_xlabel("thermal noise sigma, % of full scale")
        ax.set_ylabel(_label(model))
        ax.set_title(f"{model}: {d['chips']} chips per point, held-out calibration", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(IMG / "analog_noise.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(data), figsize=(5.2 * len(data), 6.0), squeeze=False, sharex=True)
    for col, (model, d) in enumerate(data.items()):
        for rule, color in (("threshold", "tab:blue"), ("margin", "tab:orange")):
            pts = d["bits"][rule]
            x = [int(b) for b in pts]
            axes[0][col].plot(x, [pts[b]["bands"]["kept_fraction"]["mean"] for b in pts], "o-", color=color,
                              label=rule)
            axes[1][col].plot(x, [pts[b]["bands"][METRIC[model]]["mean"] for b in pts], "o-", color=color,
                              label=rule)
            # the default design point (4 bits, default noise) has a Monte Carlo band: the chip-to-chip spread
            mc = d["noise"][rule][str(100 * d["default_noise_fraction_fs"])]["bands"][METRIC[model]]
            axes[1][col].errorbar([4.15 if rule == "margin" else 3.85], [mc["mean"]],
                                  yerr=[[mc["mean"] - mc["p5"]], [mc["p95"] - mc["mean"]]], color=color, capsize=4,
                                  fmt="none", label=f"{rule}: p5-p95 over {d['chips']} chips at 4 bits")
        axes[0][col].set_ylabel("kept fraction")
        axes[0][col].set_title(f"{model}: MSB bits, chip 0 (analog errors in % of full scale)", fontsize=9)
        axes[1][col].set_ylabel(_label(model))
        axes[1][col].set_xlabel("MSB bits (query_bits = key_bits)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(IMG / "analog_bits.png", dpi=110)
    plt.close(fig)


def _fmt(model: str, band: dict) -> str:
    v = band[METRIC[model]]
    if METRIC[model] == "perplexity_change":
        return f"{v['mean']:+.1%} [{v['p5']:+.1%}, {v['p95']:+.1%}]"
    return f"{v['mean']:.4f} [{v['p5']:.4f}, {v['p95']:.4f}]"


def tables(data: dict) -> str:
    lines = ["| model | rule | noise (% FS) | kept fraction | output rel. error | empty rows | task metric mean "
             "[p5, p95] |", "|---|---|---:|---:|---:|---:|---|"]
    for model, d in data.items():
        for rule, pts in d["noise"].items():
            for pct, p in pts.items():
                b = p["bands"]
                lines.append(f"| {model} | {rule} | {pct} | {b['kept_fraction']['mean']:.3f} | "
                             f"{b['output_rel_err']['mean']:.3f} | {b['empty_rows']['mean']:.1f} | "
                             f"{_fmt(model, b)} |")
    lines += ["", "| model | rule | MSB bits | kept fraction | top-1 agreement | task metric |",
              "|---|---|---:|---:|---:|---|"]
    for model, d in data.items():
        for rule, pts in d["bits"].items():
            for bits, p in pts.items():
                b = p["bands"]
                lines.append(f"| {model} | {rule} | {bits} | {b['kept_fraction']['mean']:.3f} | "
                             f"{b['top1_agreement']['mean']:.4f} | {_fmt(model, b).split(' [')[0]} |")
    lines += ["", "| model | rule | rounding | kept fraction | mass kept | top-1 agreement | task metric |",
              "|---|---|---|---:|---:|---:|---|"]
    for model, d in data.items():
        for rule, pts in d["rounding"].items():
            for mode, p in pts.items():
                b = p["bands"]
                lines.append(f"| {model} | {rule} | {mode} | {b['kept_fraction']['mean']:.3f} | "
                             f"{b['mass_kept']['mean']:.3f} | {b['top1_agreement']['mean']:.4f} | "
                             f"{_fmt(model, b).split(' [')[0]} |")
    cm = data.get("minilm-l6", {}).get("common_mode", {})
    if cm:
        lines += ["", "| minilm-l6 rule | noise (% FS) | per-token rel. error | token-mean rel. error | "
                      "common-mode share of the error | mass kept | embedding cosine |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for rule, pts in cm.items():
            for pct, c in pts.items():
                cos = data["minilm-l6"]["noise"][rule][pct]["bands"]["embedding_cosine"]["mean"]
                lines.append(f"| {rule} | {pct} | {c['per_token_rel_err']:.3f} | {c['token_mean_rel_err']:.3f} | "
                             f"{c['common_mode_share']:.3f} | {c['mass_kept']:.3f} | {cos:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        result = run(sys.argv[2])
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"analog_{sys.argv[2]}.json").write_text(json.dumps(result, indent=1) + "\n")
    elif len(sys.argv) >= 2 and sys.argv[1] == "plot":
        data = _load()
        plot(data)
        text = tables(data)
        (RESULTS / "analog_accuracy.md").write_text(text + "\n")
        print(text)
    elif len(sys.argv) >= 2 and sys.argv[1] == "rounding":
        text = rounding_at_fixed_margin()
        (RESULTS / "analog_rounding.md").write_text(text + "\n")
        print(text)
    elif len(sys.argv) >= 2 and sys.argv[1] == "explain":
        text = explain()
        (RESULTS / "analog_explain.md").write_text(text + "\n")
        print(text)
    else:
        sys.exit(__doc__)
