"""What observability costs: the event loop with the recorder hooks removed, off (no timeline asked), and on.

    python3 benchmarks/bench_recorder.py [--layers 2] [--seq-len 512] [--repeats 7] [--out FILE.json]

The functional pass is computed once; each variant then runs the same SimPy event loop (``System.run``) on
the same tiles, interleaved in rotating order, ``--repeats`` times. The figure compared is the best CPU time
of the process (``time.process_time``; the minimum is the one least disturbed by other work on a shared
machine), wall time is reported beside it. Variants:

- ``removed``: the per-event hooks replaced by hook-free code (``Port.charge`` without the span call,
  the token buffer without its counter call): the simulator as if it had no recorder at all;
- ``off``: ``Recorder(None)``, what ``soc run`` uses without ``--timeline``/``--plots``: every block holds
  ``None`` instead of a callback and pays one ``if`` per event;
- ``on``: a ``TimelineSink`` recording every track; ``on (cim, digital)``: only the CIM and digital tracks
  (``--timeline-blocks 'cim*,digital*'``), the filtered-out ports holding no callback.

Exit status 1 when ``off`` costs more than ``--limit`` (3%) over ``removed``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soc.config import load_config  # noqa: E402
from soc.hw import base as hwbase  # noqa: E402
from soc.hw import token_buffer as tbmod  # noqa: E402
from soc.recorder import OFF, Recorder  # noqa: E402
from soc.simulate import shape_of, simulate  # noqa: E402
from soc.system import System  # noqa: E402
from soc.timeline import TimelineFilter, TimelineSink  # noqa: E402


@contextlib.contextmanager
def hooks_removed():
    """Swap in hook-free versions of the per-event hooks, restoring them afterwards."""
    charge, level = hwbase.Port.charge, tbmod.TokenBuffer._level_changed
    bank_occupy = hwbase.BankSet.occupy

    def bare_charge(self, start_ns, duration_ns, label, args):
        self.busy_ns += duration_ns
        self.jobs += 1

    def bare_bank_occupy(self, start_ns, duration_ns, label, args):  # BankSet charges its banks inline
        for port in self.ports:
            port.busy_ns += duration_ns
            port.jobs += 1
        self.array.occupy(self.banks, start_ns + duration_ns)

    def bare_level(self, delta):
        now = self.env.now
        self._occupancy_area += self._level * (now - self._last_t)
        self._last_t = now
        self._level += delta
        self.peak = max(self.peak, self._level)

    hwbase.Port.charge, tbmod.TokenBuffer._level_changed = bare_charge, bare_level
    hwbase.BankSet.occupy = bare_bank_occupy
    try:
        yield
    finally:
        hwbase.Port.charge, tbmod.TokenBuffer._level_changed = charge, level
        hwbase.BankSet.occupy = bank_occupy


def _timed(system: System, chunks) -> tuple[float, float, float]:
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    stats = system.run(chunks)
    return time.process_time() - c0, time.perf_counter() - w0, stats.latency_ns


def run_once(cfg, shape, chunks, variant: str) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds, simulated latency ns) of one event loop."""
    if variant == "removed":
        with hooks_removed():
            return _timed(System(cfg, shape, OFF), chunks)
    if variant == "off":
        recorder = OFF
    elif variant == "on":
        recorder = Recorder(TimelineSink(TimelineFilter()))
    else:
        recorder = Recorder(TimelineSink(TimelineFilter(blocks=("cim*", "digital*"))))
    return _timed(System(cfg, shape, recorder), chunks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/hybrid65nm.yaml"))
    ap.add_argument("--workload", default="bert-base")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--limit", type=float, default=0.03, help="allowed overhead of 'off' over 'removed'")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = ap.parse_args(argv)

    from soc.trace import synth_trace
    from soc.trace.workload import load_workload

    cfg = load_config(a.config)
    trace = synth_trace(load_workload(a.workload), seq_len=a.seq_len, layers=a.layers, seed=0)
    shape = shape_of(trace)
    chunks = simulate(cfg, trace).functional.chunks  # the tiles every variant replays
    variants = ("removed", "off", "on", "on (cim, digital)")
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    latency = set()
    run_once(cfg, shape, chunks, "off")  # warm-up: imports, allocator
    for rep in range(a.repeats):
        for j in range(len(variants)):  # rotate the order so no variant always runs first
            v = variants[(rep + j) % len(variants)]
            c, w, lat = run_once(cfg, shape, chunks, v)
            cpu[v].append(c)
            wall[v].append(w)
            latency.add(lat)
    assert len(latency) == 1, f"the recorder changed the simulated latency: {latency}"
    best = {v: min(x) for v, x in cpu.items()}
    base = best["removed"]
    result = {
        "workload": {"name": a.workload, "seq_len": a.seq_len, "layers": a.layers,
                     "chunks": len(chunks["layer"])},
        "repeats": a.repeats, "python": platform.python_version(), "machine": platform.machine(),
        "best_cpu_s": best, "best_wall_s": {v: min(x) for v, x in wall.items()},
        "median_cpu_s": {v: sorted(x)[len(x) // 2] for v, x in cpu.items()},
        "ratio_to_removed": {v: best[v] / base for v in variants},
        "limit": 1.0 + a.limit,
    }
    print(f"event loop of {a.workload}, {a.layers} layer(s), seq {a.seq_len} "
          f"({result['workload']['chunks']:,} tiles), best CPU time of {a.repeats}:")
    for v in variants:
        print(f"  {v:<20} {best[v]:7.3f} s   x{best[v] / base:.3f}   (wall {result['best_wall_s'][v]:.3f} s)")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = result["ratio_to_removed"]["off"] <= 1.0 + a.limit
    print(f"  off / removed = {result['ratio_to_removed']['off']:.3f} "
          f"({'within' if ok else 'OVER'} the {a.limit:.0%} limit)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
