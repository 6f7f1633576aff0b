"""Request streams of 64-byte lines and the closed-loop driver that runs them on the banked DRAM model.

The same streams (regenerated from fixed seeds) and the same issue rule drive DRAMsim3 in
benchmarks/dram_reference.py, whose results are stored in tests/data/dramsim3_reference.json. Issue rule: lines
issue in stream order, line i at the first instant >= its arrival and after line i-1, once its channel has
fewer than ``window`` lines outstanding. A line completes with its data; posted writes when accepted.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import simpy

from soc.config.schema import DramConfig
from soc.hw.base import MemAccess, hold
from soc.hw.dram_banked import BankedDram
from soc.hw.dram_presets import address_fields, resolve_spec
from soc.recorder import OFF

LINE_BYTES = 64
LINES = 1500
LOW_RATE_GAP_NS = 100.0
WINDOW = 32  # lines outstanding per channel (the controller's transaction queue depth in both simulators)

#: The memories compared: our preset and config overrides (DRAMsim3's side is in benchmarks/dram_reference.py).
MEMORIES: dict[str, dict] = {
    "ddr4": {"preset": "ddr4-3200"},
    "ddr4_2rank": {"preset": "ddr4-3200", "ranks": 2},
    "hbm2": {"preset": "hbm2"},
    "lpddr4": {"preset": "lpddr4-3200"},
}

STREAMS = ("sequential", "random", "sequential_low_rate", "random_low_rate", "read_read_write",
           "bank_conflicts", "alternating_rows", "kv_tiles")


class Line(NamedTuple):
    arrival_ns: float
    address: int
    write: bool


def config(memory: str) -> DramConfig:
    return DramConfig(kind="banked", refresh=False, page_policy="open", scheduler="frfcfs",
                      **MEMORIES[memory])


def encode(spec, **fields) -> int:
    """An address from field values: walk the mapping from the LSB (burst offset) up."""
    widths = dict(address_fields(spec))
    addr, shift = 0, spec.burst_bytes.bit_length() - 1
    for name, bits in widths.items():
        addr |= (fields.get(name, 0) & ((1 << bits) - 1)) << shift
        shift += bits
    return addr


def channel_shift(spec) -> int:
    """Bit position of the channel field in a byte address (channels > 1)."""
    shift = spec.burst_bytes.bit_length() - 1
    for name, bits in address_fields(spec):
        if name == "channel":
            return shift
        shift += bits
    return 0


def stream(memory: str, name: str, lines: int = LINES) -> list[Line]:
    """The named stream for ``memory``, from a seed fixed per (memory, stream)."""
    spec = resolve_spec(config(memory))
    rng = np.random.default_rng(1000 * list(MEMORIES).index(memory) + STREAMS.index(name))
    capacity = spec.channels * spec.ranks * spec.banks_per_channel * spec.rows_per_bank * spec.row_bytes
    n = np.arange(lines)
    seq = n * LINE_BYTES
    rand = rng.integers(0, capacity // LINE_BYTES, lines) * LINE_BYTES
    cols = spec.row_bytes // LINE_BYTES
    per_burst = LINE_BYTES // spec.burst_bytes  # bursts per line (LPDDR4: 2)
    arrival = np.zeros(lines)
    write = np.zeros(lines, dtype=bool)
    if name == "sequential":
        addr = seq
    elif name == "random":
        addr = rand
    elif name == "sequential_low_rate":
        addr, arrival = seq, n * LOW_RATE_GAP_NS
    elif name == "random_low_rate":
        addr, arrival = rand, n * LOW_RATE_GAP_NS
    elif name == "read_read_write":
        addr, write = seq, n % 3 == 2
    elif name == "bank_conflicts":
        rows = rng.integers(0, spec.rows_per_bank, lines)
        addr = np.array([encode(spec, row=int(r), column=int(c % cols) * per_burst) for r, c in zip(rows, n)])
    elif name == "alternating_rows":
        pair = rng.choice(spec.rows_per_bank, 2, replace=False)
        addr = np.array([encode(spec, row=int(pair[i % 2]), column=(i // 2 % cols) * per_burst)
                         for i in range(lines)])
    elif name == "kv_tiles":
        parts, total = [], 0
        while total < lines:
            run = int(rng.integers(8, 65))
            start = int(rng.integers(0, capacity // spec.row_bytes)) * spec.row_bytes
            parts.append(start + np.arange(run) * LINE_BYTES)
            total += run
        addr = np.concatenate(parts)[:lines]
    else:
        raise KeyError(name)
    return [Line(float(t), int(a), bool(w)) for t, a, w in zip(arrival, addr, write)]


def run_ours(memory: str, lines: list[Line], window: int = WINDOW) -> dict[str, float]:
    """Bandwidth (all lines' bytes / last completion) and mean read latency of ``lines`` on our model."""
    env = simpy.Environment()
    dram = BankedDram(env, "dram", config(memory), OFF)
    spec = dram.spec
    shift, nch = channel_shift(spec), spec.channels
    outstanding = [0] * nch
    freed: list[simpy.Event | None] = [None]
    reads: list[float] = []
    end = [0.0]

    def one(line: Line, ch: int):
        t0 = env.now
        yield from hold(env, dram.access(LINE_BYTES, line.write, (MemAccess(line.address, LINE_BYTES),)), "x")
        if not line.write:
            reads.append(env.now - t0)
        end[0] = max(end[0], env.now)
        outstanding[ch] -= 1
        if freed[0] is not None and not freed[0].triggered:
            freed[0].succeed()

    def issuer():
        for line in lines:
            if line.arrival_ns > env.now:
                yield env.timeout(line.arrival_ns - env.now)
            ch = (line.address >> shift) & (nch - 1) if nch > 1 else 0
            while outstanding[ch] >= window:
                freed[0] = env.event()
                yield freed[0]
            outstanding[ch] += 1
            env.process(one(line, ch))

    env.process(issuer())
    env.run()
    return {"bandwidth_gb_per_s": LINE_BYTES * len(lines) / end[0],
            "mean_read_latency_ns": float(np.mean(reads)) if reads else 0.0,
            "row_hit_rate": dram.extra_report()["row_hit_rate"]}
