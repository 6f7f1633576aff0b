"""`soc bench`: the simulator's speed, as ratios against floors measured in the same run.

Floors: (1) the cost of one bare SimPy timeout event and of one event in a Store + Resource pipeline, (2) numpy
dense attention (Q.K^T, softmax, P.V) for the same shape. The simulator's figures are reported as multiples of
those floors, so a busy or slow machine moves both sides alike.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import simpy

from soc.cli import extra_command


def simpy_timeout_floor_s(n: int = 200_000) -> float:
    """Seconds per bare timeout event."""
    env = simpy.Environment()

    def proc():
        for _ in range(n):
            yield env.timeout(1)

    env.process(proc())
    t0 = time.perf_counter()
    env.run()
    return (time.perf_counter() - t0) / n


def simpy_pipeline_floor_s(n: int = 50_000) -> float:
    """Seconds per event in a two-stage Store + Resource pipeline (what a tile costs at the least)."""
    env = simpy.Environment()
    store = simpy.Store(env, capacity=4)
    res = simpy.Resource(env, capacity=1)

    def producer():
        for i in range(n):
            with res.request() as req:
                yield req
                yield env.timeout(1)
            yield store.put(i)

    def consumer():
        for _ in range(n):
            yield store.get()
            yield env.timeout(1)

    env.process(producer())
    env.process(consumer())
    t0 = time.perf_counter()
    env.run()
    events = int(next(env._eid))  # SimPy numbers every scheduled event
    return (time.perf_counter() - t0) / events


def dense_attention_floor_s(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> float:
    """Seconds for plain numpy dense attention over every layer (float32)."""
    t0 = time.perf_counter()
    heads, kv_heads = q.shape[1], k.shape[1]
    for layer in range(q.shape[0]):
        ql = np.asarray(q[layer], dtype=np.float32)
        kl = np.repeat(np.asarray(k[layer], dtype=np.float32), heads // kv_heads, axis=0)
        vl = np.repeat(np.asarray(v[layer], dtype=np.float32), heads // kv_heads, axis=0)
        s = ql @ kl.transpose(0, 2, 1) / np.sqrt(ql.shape[-1])
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        _ = s @ vl
    return time.perf_counter() - t0


def run_bench(workload: str = "bert-base", seq_len: int = 512, layers: int | None = None,
              config: str = "configs/hybrid65nm.yaml") -> dict:
    from soc.config import load_config
    from soc.simulate import simulate
    from soc.trace import synth_trace
    from soc.trace.workload import load_workload

    trace = synth_trace(load_workload(workload), seq_len=seq_len, layers=layers, seed=0)
    timeout_s = simpy_timeout_floor_s()
    pipeline_s = simpy_pipeline_floor_s()
    dense_s = min(dense_attention_floor_s(trace.q, trace.k, trace.v) for _ in range(2))
    t0 = time.perf_counter()
    result = simulate(load_config(config), trace)
    total_s = time.perf_counter() - t0
    sim = result.report["sim"]
    functional_s = total_s - sim["sim_wall_s"]
    per_event_s = sim["sim_wall_s"] / max(1, sim["events"])
    return {
        "workload": {"model": workload, "seq_len": seq_len, "layers": trace.meta.layers,
                     "heads": trace.meta.heads, "head_dim": trace.meta.head_dim},
        "config": config,
        "floors": {"simpy_timeout_event_us": timeout_s * 1e6, "simpy_pipeline_event_us": pipeline_s * 1e6,
                   "numpy_dense_attention_s": dense_s},
        "soc": {"total_s": total_s, "functional_s": functional_s, "event_loop_s": sim["sim_wall_s"],
                "events": sim["events"], "chunks": sim["chunks"], "us_per_event": per_event_s * 1e6},
        "ratios": {"event_cost_vs_pipeline_floor": per_event_s / pipeline_s,
                   "event_cost_vs_timeout_floor": per_event_s / timeout_s,
                   "functional_vs_dense_attention": functional_s / dense_s},
    }


def format_bench(r: dict) -> str:
    f, s, x = r["floors"], r["soc"], r["ratios"]
    w = r["workload"]
    return "\n".join([
        f"soc bench: {w['model']} {w['layers']}x{w['heads']} heads, seq {w['seq_len']}, head_dim {w['head_dim']}",
        f"  floors      SimPy timeout {f['simpy_timeout_event_us']:.2f} us/event, Store+Resource pipeline "
        f"{f['simpy_pipeline_event_us']:.2f} us/event, numpy dense attention {f['numpy_dense_attention_s']:.3f} s",
        f"  simulator   {s['total_s']:.2f} s total: functional {s['functional_s']:.2f} s, event loop "
        f"{s['event_loop_s']:.2f} s for {s['events']:,} events ({s['chunks']:,} tiles), {s['us_per_event']:.2f} us/event",
        f"  ratios      event cost = {x['event_cost_vs_pipeline_floor']:.2f}x pipeline floor "
        f"({x['event_cost_vs_timeout_floor']:.2f}x bare timeout); functional = "
        f"{x['functional_vs_dense_attention']:.2f}x numpy dense attention",
    ])


def cmd_bench(args: argparse.Namespace) -> int:
    from soc.io import write_json

    r = run_bench(args.workload, args.seq_len, args.layers, args.config)
    print(format_bench(r))
    if args.out:
        write_json(Path(args.out), r)
        print(f"  wrote       {args.out}")
    return 0


@extra_command
def _register(sub) -> None:
    from soc.cli import CONFIG_HELP, _pos_int, add_parser

    p = add_parser(sub, "bench", help="speed benchmark, as ratios against SimPy and numpy floors",
                   description="Speed of the simulator on a synthetic workload, as ratios against floors "
                               "measured in the same process.")
    p.add_argument("--workload", default="bert-base", metavar="NAME",
                   help="workload shape from workloads/NAME.yaml (default: bert-base)")
    p.add_argument("--seq-len", type=_pos_int, default=512, metavar="N",
                   help="sequence length in tokens (default: 512)")
    p.add_argument("--layers", type=_pos_int, default=None, metavar="N",
                   help="first N layers of the workload (default: all)")
    p.add_argument("--config", default="hybrid65nm", help=CONFIG_HELP + " (default: hybrid65nm)")
    p.add_argument("--out", default=None, metavar="PATH.json",
                   help="also write the figures as JSON to PATH.json (default: print only)")
    p.set_defaults(func=cmd_bench)


if __name__ == "__main__":
    print(json.dumps(run_bench(), indent=2))
