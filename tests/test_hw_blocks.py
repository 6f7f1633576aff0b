"""Timing rules of each block against hand-computed values, and event logs of (block, time)."""

import math

import numpy as np
import pytest
import simpy

from soc.config import config_from_dict
from soc.errors import WiringError
from soc.hw.base import block_class, hold
from soc.recorder import MemorySink, Recorder

CFG = config_from_dict({})


def make(section, cfg, name, rec=None):
    env = simpy.Environment()
    return env, block_class(section, cfg.kind)(env, name, cfg, rec or Recorder(None))


def test_hold_serializes_jobs_on_one_port_and_logs_times():
    env, dram = make("dram", CFG.dram, "dram")
    log = []

    def job(tag, nbytes):
        yield from hold(env, dram.access(nbytes, write=False), tag)
        log.append((tag, env.now))

    env.process(job("a", 640))
    env.process(job("b", 64))
    env.run()
    t_a = 40.0 + 640 / 6.4
    t_b = t_a + 40.0 + 64 / 6.4
    assert log == [("a", pytest.approx(t_a)), ("b", pytest.approx(t_b))]
    assert dram.busy_ns() == pytest.approx(t_b)
    assert dram.counts["read_bytes"] == 704


def test_sram_banks_interleave_and_conflicts_serialize():
    cfg = CFG.sram  # 8 banks x 8 bytes at 1.1 GHz
    env, sram = make("sram", cfg, "sram")
    (claim, d), = sram.access(64, write=True)  # 8 words over 8 banks: one cycle
    assert claim.mask == 0xFF and d == pytest.approx(1 / 1.1)
    (claim, d), = sram.access(640, write=False)  # 80 words over 8 banks: 10 cycles
    assert len(claim.ports) == 8 and d == pytest.approx(10 / 1.1)
    (claim, d), = sram.access(24, write=False)  # 3 words: banks 0..2 (the cursor wrapped to 0)
    assert claim.mask == 0b111 and d == pytest.approx(1 / 1.1)
    env2, sram2 = make("sram", cfg, "sram")
    done = []

    def access(tag, nbytes):
        yield from hold(env2, sram2.access(nbytes, write=False), tag)
        done.append((tag, env2.now))

    env2.process(access("x", 16))  # banks 0, 1
    env2.process(access("y", 16))  # banks 2, 3: no conflict, parallel
    env2.process(access("z", 64))  # banks 4..7, 0..3: conflicts with both, waits
    env2.run()
    cyc = 1 / 1.1
    assert done == [("x", pytest.approx(cyc)), ("y", pytest.approx(cyc)), ("z", pytest.approx(2 * cyc))]


def test_cim_timing_rule_per_pruning_rule():
    env, cim = make("cim", CFG.cim, "cim0")
    cyc = 1 / 1.1
    q = np.array([32, 32, 32, 32, 32])
    k = np.array([64, 64, 64, 64, 64])
    codes = np.array([1, 2, 2, 3, 0])  # threshold, margin (multi tile), margin (one tile), topk, none
    tiles = np.array([4, 4, 1, 4, 4])
    got = cim.score_ns(q, k, codes, tiles)
    per = 32 * (4 + 1)
    assert got == pytest.approx(np.array([per, 2 * per, per + 32 * 7, per + 32 * math.ceil(64 / 16), per]) * cyc)
    # 64 keys x 64 dims x 4 bits written 128 bits per cycle
    assert cim.write_ns(np.array([64]), 64)[0] == pytest.approx(64 * 64 * 4 / 128 * cyc)
    assert cim.key_tile(64) == 64 and cim.key_tile(32) == 128


def test_digital_predictor_pays_per_element_where_the_array_pays_per_query():
    cfg = config_from_dict({"cim": {"kind": "digital_predictor", "predictor_lanes": 64, "compare_cycles": 0,
                                    "clock_ghz": 1.0}}).cim
    env, pred = make("cim", cfg, "cim0")
    pred.set_head_dim(32)
    got = pred.score_ns(np.array([32]), np.array([128]), np.array([3]), np.array([2]))[0]
    assert got == pytest.approx(32 * (128 * 32 / 64) + 32 * math.ceil(128 / 16))  # MACs, then the top-k sorter


def test_digital_timing_rule():
    env, dig = make("digital", CFG.digital, "digital0")
    got = dig.compute_ns(np.array([100]), np.array([10]), 64)[0]
    cycles = 8 + max(math.ceil(2 * 100 * 64 / 64), math.ceil(100 / 4)) + math.ceil(10 * 64 / 64)
    assert got == pytest.approx(cycles / 1.1)


def test_interconnect_routes_and_missing_route():
    env = simpy.Environment()
    net = block_class("interconnect", "graph")(env, "interconnect", CFG.interconnect, Recorder(None))
    net.add_route("dram", "digital0")
    assert net.routes[("dram", "digital0")] == [("dram", "sram"), ("sram", "digital0")]
    jobs = net.transfer("dram", "digital0", 128)
    assert [d for _, d in jobs] == pytest.approx([3.0 + 128 / 12.8, 3.0 + 128 / 35.2])  # head latency adds up
    assert net.link_bytes[("dram", "sram")] == 128 and net.link_bytes[("sram", "digital0")] == 128
    with pytest.raises(WiringError, match="block 'cim7' has no link"):
        net.add_route("cim7", "digital0")


def test_token_buffer_occupancy_and_back_pressure():
    env = simpy.Environment()
    sink = MemorySink()
    tb = block_class("token_buffer", "fifo")(env, "token_buffer0", config_from_dict(
        {"token_buffer": {"depth_entries": 2}}).token_buffer, Recorder(sink))
    puts = []

    def producer():
        for i in range(4):
            yield from tb.put(i, 8)
            puts.append(env.now)

    def consumer():
        yield env.timeout(10)
        for _ in range(4):
            yield from tb.get()
            yield env.timeout(10)

    env.process(producer())
    env.process(consumer())
    env.run()
    assert puts == [0, 0, 10, 20]  # the third put waits for the first get: back-pressure
    assert tb.peak == 2
    levels = [v for _, _, v in sink.counters]
    assert max(levels) == 2 and levels[-1] == 0
