"""Decode on a Llama-7B-like workload: tokens/s and DRAM bytes per generated token against the context length.

    python3 benchmarks/bench_decode.py [--contexts 64,128,...,32768] [--layers 1] [--heads 8] [--steps 2]
                                       [--out benchmarks/results/decode_context.json] [--img docs/img/decode_context.png]

For each context N a synthetic decode trace of the llama-7b workload (head_dim 128, multi-head: one kv head per
query head) with a prompt of N - 1 tokens is decoded for ``--steps`` steps (caches of N .. N+steps-1 tokens) on
the paper's chip (configs/hybrid65nm.yaml) with three pruning rules: the calibrated threshold at 25 % kept
(the default), a margin below the row max (the config's margin), and top-k 64 keys; the dense SoC
(cim.enabled=false) is the baseline. Per-token figures are means over the steps. The crossover context is the
shortest one where a rule's DRAM bytes per token reach the dense ones (the key MSBs the CIM reads at every step
cancel what pruning saves), searched in the measured contexts; for a rule that keeps a fraction f of the keys
it is where f >= 1 - key_bits / (16 * element_bytes) (0.75 on this chip). ``--layers``/``--heads`` keep the
first layers/heads: every figure per token scales with them (state them when quoting).
"""

from __future__ import annotations

import os

for _key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_key, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soc.config import load_config  # noqa: E402
from soc.decode import run_decode, synth_decode  # noqa: E402
from soc.io import write_json  # noqa: E402

RULES = {"threshold 25%": [], "margin": ["pruning.rule=margin"],
         "top-64": ["pruning.rule=topk", "pruning.topk_keys=64"]}


def measure(contexts: list[int], layers: int, heads: int, steps: int) -> dict:
    rows = []
    for n in contexts:
        t0 = time.perf_counter()
        trace = synth_decode("llama-7b", prompt=n - 1, generate=steps, layers=layers, heads=heads, prefill=False)
        synth_s = time.perf_counter() - t0
        row = {"context_tokens": n, "synth_s": synth_s, "rules": {}}
        for i, (name, sets) in enumerate(RULES.items()):
            t1 = time.perf_counter()
            d = run_decode(load_config(ROOT / "configs/hybrid65nm.yaml", sets), trace, model_accuracy=False)["decode"]
            wall = time.perf_counter() - t1
            b = d["dram_bytes_per_token"]
            row["rules"][name] = {"tokens_per_s": d["tokens_per_s"], "dram_bytes_per_token": b["hybrid"],
                                  "energy_j_per_token": d["energy_j_per_token"]["hybrid"],
                                  "kept_fraction": d["accuracy"]["kept_fraction"],
                                  "cim_reload_share": d["cim_reload_share"], "wall_s": wall}
            if i == 0:  # the dense run is the same for every rule
                row["dense"] = {"tokens_per_s": d["dense_tokens_per_s"], "dram_bytes_per_token": b["dense"],
                                "dense_best_dram_bytes_per_token": b["dense_best"],
                                "dense_best_source": b["dense_best_source"],
                                "energy_j_per_token": d["energy_j_per_token"]["dense"]}
        rows.append(row)
        print(f"context {n}: " + ", ".join(f"{k} {v['dram_bytes_per_token'] / 1024:.0f} KB/token "
                                           f"{v['tokens_per_s']:.0f} tok/s" for k, v in row["rules"].items())
              + f"; dense {row['dense']['dram_bytes_per_token'] / 1024:.0f} KB/token "
              f"{row['dense']['tokens_per_s']:.0f} tok/s", flush=True)
    crossover = {}
    for name in RULES:
        hit = [r["context_tokens"] for r in rows
               if r["rules"][name]["dram_bytes_per_token"] >= r["dense"]["dram_bytes_per_token"]]
        crossover[name] = min(hit) if hit else None
    return {"workload": "llama-7b", "layers": layers, "heads": heads, "steps": steps, "config": "hybrid65nm",
            "rules": {k: v for k, v in RULES.items()}, "contexts": rows, "crossover_context_tokens": crossover,
            "load_average": os.getloadavg()}


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["context_tokens"] for r in data["contexts"]]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    for name in data["rules"]:
        a.plot(xs, [r["rules"][name]["tokens_per_s"] for r in data["contexts"]], "o-", label=f"hybrid, {name}")
        b.plot(xs, [r["rules"][name]["dram_bytes_per_token"] / 1024 for r in data["contexts"]], "o-",
               label=f"hybrid, {name}")
    for name in data["rules"]:
        c.plot(xs, [r["dense"]["dram_bytes_per_token"] / r["rules"][name]["dram_bytes_per_token"]
                    for r in data["contexts"]], "o-", label=f"hybrid, {name}")
    c.axhline(1.0, color="k", ls="--", lw=1, label="crossover (no saving)")
    c.set_xscale("log", base=2)
    c.set_xlabel("context (cache tokens)")
    c.set_ylabel("DRAM savings per token (dense / hybrid)")
    c.grid(True, which="both", alpha=0.3)
    c.legend(fontsize=8)
    a.plot(xs, [r["dense"]["tokens_per_s"] for r in data["contexts"]], "k--", label="dense")
    b.plot(xs, [r["dense"]["dram_bytes_per_token"] / 1024 for r in data["contexts"]], "k--", label="dense")
    for ax, what in ((a, "tokens/s"), (b, "DRAM KB per generated token")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (cache tokens)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle(f"Decode, Llama-7B-like ({data['layers']} layer x {data['heads']} heads, head_dim 128), "
                 "paper's chip", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", default="64,128,256,512,1024,2048,4096,8192,16384,32768")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/decode_context.json"))
    p.add_argument("--img", default=str(ROOT / "docs/img/decode_context.png"))
    args = p.parse_args()
    t0 = time.perf_counter()
    data = measure([int(x) for x in args.contexts.split(",")], args.layers, args.heads, args.steps)
    data["wall_s"] = time.perf_counter() - t0
    write_json(Path(args.out), data)
    plot(data, Path(args.img))
    print(json.dumps(data["crossover_context_tokens"]), f"wall {data['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
