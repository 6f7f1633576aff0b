"""Bank-level DRAM: closed-form latencies, streaming and random bandwidth, counters, mapping, scheduling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import simpy

from soc.config.schema import DramConfig
from soc.errors import ConfigError
from soc.hw.base import MemAccess, hold
from soc.hw.dram_banked import BankedDram, resolve_spec
from soc.hw.dram_presets import PRESETS
from soc.recorder import OFF

PRESET_NAMES = tuple(PRESETS)


def make(preset: str, **over):
    env = simpy.Environment()
    cfg = DramConfig(kind="banked", preset=preset, **over)
    return env, BankedDram(env, "dram", cfg, OFF)


def encode(spec, **fields) -> int:
    """An address from field values, written independently of the model: walk the mapping from LSB up."""
    widths = {"channel": spec.channels, "rank": spec.ranks, "bankgroup": spec.bank_groups,
              "bank": spec.banks_per_channel // spec.bank_groups,
              "column": spec.row_bytes // spec.burst_bytes, "row": spec.rows_per_bank}
    addr, scale = 0, spec.burst_bytes
    for name in reversed(spec.address_mapping.split(":")):
        addr += fields.get(name, 0) * scale
        scale *= widths[name]
    return addr


def timed(env, dram, address, nbytes, write=False, at=None):
    """Issue one access (at time ``at``) and return its latency."""
    out = {}

    def proc():
        if at is not None:
            yield env.timeout(at - env.now)
        t0 = env.now
        yield from hold(env, dram.access(nbytes, write, (MemAccess(address, nbytes),)), "t")
        out["lat"] = env.now - t0

    env.process(proc())
    env.run()
    return out["lat"]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_closed_form_miss_hit_conflict(preset):
    env, d = make(preset)
    s = d.spec
    tb = s.burst_length * 1e3 / s.data_rate_mtps  # burst on the bus: BL transfers at the data rate
    a = encode(s, row=5, bank=1, column=3)
    # a precharged bank: activate, tRCD, then CL and the burst
    assert timed(env, d, a, s.burst_bytes) == pytest.approx(s.trcd_ns + s.cl_ns + tb, abs=1e-9)
    # the row is open: CL + burst
    assert timed(env, d, encode(s, row=5, bank=1, column=4), s.burst_bytes, at=env.now + 1e4) == \
        pytest.approx(s.cl_ns + tb, abs=1e-9)
    # another row of the same bank: precharge, activate, read
    assert timed(env, d, encode(s, row=9, bank=1, column=0), s.burst_bytes, at=env.now + 1e4) == \
        pytest.approx(s.trp_ns + s.trcd_ns + s.cl_ns + tb, abs=1e-9)
    c = d.counts
    assert (c["row_misses"], c["row_hits"], c["row_conflicts"]) == (1, 1, 1)
    # a write is posted: done once its data is in the write buffer
    assert timed(env, d, encode(s, row=9, bank=1, column=2), s.burst_bytes, write=True, at=env.now + 1e4) == \
        pytest.approx(tb, abs=1e-9)
    # without a write buffer a write hit takes the write latency
    env, d = make(preset, write_high_watermark=0)
    timed(env, d, a, s.burst_bytes)
    assert timed(env, d, encode(s, row=5, bank=1, column=2), s.burst_bytes, write=True, at=env.now + 1e4) == \
        pytest.approx(s.cwl_ns + tb, abs=1e-9)
    assert d.extra_report()["row_hit_rate"] == pytest.approx(0.5)


def test_conflict_waits_for_tras_of_a_fresh_activate():
    """A conflict right after the activate cannot precharge before tRAS has passed."""
    env, d = make("lpddr4-3200")
    s = d.spec
    tb = s.t_burst_ns
    first = timed(env, d, encode(s, row=1), s.burst_bytes)  # activate at t=0
    lat = timed(env, d, encode(s, row=2), s.burst_bytes)    # issued at t=first, same bank
    # precharge at max(first, tRAS) (the read's tRTP is earlier), then tRP + tRCD + CL + burst
    expect = max(first, s.tras_ns, s.trcd_ns + s.trtp_ns) + s.trp_ns + s.trcd_ns + s.cl_ns + tb - first
    assert lat == pytest.approx(expect, abs=1e-9)


def test_closed_page_turns_hits_into_misses():
    env, d = make("ddr4-3200", page_policy="closed")
    s = d.spec
    timed(env, d, encode(s, row=3), s.burst_bytes)
    lat = timed(env, d, encode(s, row=3, column=1), s.burst_bytes, at=env.now + 1e4)
    assert lat == pytest.approx(s.trcd_ns + s.cl_ns + s.t_burst_ns, abs=1e-9)
    lat = timed(env, d, encode(s, row=8), s.burst_bytes, at=env.now + 1e4)  # other row: still no conflict
    assert lat == pytest.approx(s.trcd_ns + s.cl_ns + s.t_burst_ns, abs=1e-9)
    assert d.counts["row_conflicts"] == 0 and d.counts["row_misses"] == 3


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_streaming_read_sustains_peak_bandwidth(preset):
    env, d = make(preset)
    s = d.spec
    peak = s.channels * s.data_rate_mtps * 1e-3 * s.bus_bytes  # GB/s = bytes/ns
    nbytes = 2 << 20
    lat = timed(env, d, 0, nbytes)
    assert nbytes / lat >= 0.9 * peak
    assert nbytes / lat <= peak * (1 + 1e-9)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_streaming_with_refresh_loses_about_trfc_over_trefi(preset):
    env, d = make(preset)
    env2, d2 = make(preset, refresh=True)
    nbytes = (1 << 20) * d.spec.channels  # 16 KB per channel per request: the request latency is amortized
    # many requests back to back, so refreshes fall between them
    def run(env, dram):
        def proc():
            for i in range(64):
                part = (MemAccess(i * nbytes // 64, nbytes / 64),)
                yield from hold(env, dram.access(nbytes / 64, False, part), "s")
        env.process(proc())
        env.run()
        return env.now
    t_plain, t_ref = run(env, d), run(env2, d2)
    s = d.spec
    refreshes = d2.counts["refreshes"]
    # one refresh per channel per tREFI, issued when the next request arrives (postponed, as JEDEC allows)
    assert s.channels * (t_ref // s.trefi_ns - 1) <= refreshes <= s.channels * (t_ref // s.trefi_ns)
    per_channel = refreshes / s.channels
    # each refresh costs tRFC; it closes every row, so a later row conflict becomes a miss and saves one tRP
    saved = (d.counts["row_conflicts"] - d2.counts["row_conflicts"]) / s.channels * s.trp_ns
    assert t_ref - t_plain >= per_channel * s.trfc_ns - saved - 1e-6
    assert t_ref - t_plain <= per_channel * (s.trfc_ns + s.trp_ns + s.trcd_ns)
    assert nbytes / t_ref >= 0.9 * s.peak_gb_per_s * (1 - s.trfc_ns / s.trefi_ns)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_dependent_random_reads_are_far_below_peak(preset):
    """One outstanding 1-burst read at a time to random addresses: each pays (nearly) a full conflict."""
    env, d = make(preset)
    s = d.spec
    rng = np.random.default_rng(0)
    cap = s.channels * s.banks_per_channel * s.rows_per_bank * s.row_bytes
    addrs = (rng.integers(0, cap // s.burst_bytes, 500) * s.burst_bytes).tolist()

    def proc():
        for a in addrs:
            yield from hold(env, d.access(s.burst_bytes, False, (MemAccess(a, s.burst_bytes),)), "r")

    env.process(proc())
    env.run()
    bw = 500 * s.burst_bytes / env.now
    per_access = s.trp_ns + s.trcd_ns + s.cl_ns + s.t_burst_ns
    assert bw < 0.2 * s.peak_gb_per_s
    assert bw == pytest.approx(s.burst_bytes / per_access, rel=0.1)


@pytest.mark.parametrize("preset", ["lpddr4-3200", "ddr4-3200"])
def test_independent_random_reads_are_bounded_by_the_activate_window(preset):
    """All random bursts known at once (bank parallelism): every burst needs an activate, and at most four
    activates fit in tFAW, so bandwidth <= 4 bursts / tFAW per channel, well under peak."""
    env, d = make(preset)
    s = d.spec
    rng = np.random.default_rng(1)
    cap = s.banks_per_channel * s.rows_per_bank * s.row_bytes
    addrs = np.unique(rng.integers(0, cap // s.burst_bytes, 2000)) * s.burst_bytes
    where = tuple(MemAccess(int(a), s.burst_bytes) for a in rng.permutation(addrs))
    out = {}

    def proc():
        yield from hold(env, d.access(len(where) * s.burst_bytes, False, where), "r")
        out["t"] = env.now

    env.process(proc())
    env.run()
    bw = len(where) * s.burst_bytes / out["t"]
    acts = d.counts["activations"]
    assert acts >= 0.95 * len(where)  # random rows rarely repeat
    bound = 4 * s.burst_bytes / max(s.tfaw_ns, 4 * s.trrd_s_ns)
    assert bw <= bound * 1.01
    assert bw < 0.6 * s.peak_gb_per_s


def test_counters_and_energy_follow_the_preset():
    env, d = make("ddr4-3200")
    s = d.spec
    timed(env, d, 0, 4096)
    timed(env, d, 1 << 24, 1000, write=True)
    c = d.counts
    bursts = c["read_bursts"] + c["write_bursts"]
    assert c["read_bursts"] == 4096 / 64 and c["write_bursts"] == -(-1000 // 64)
    assert c["row_hits"] + c["row_misses"] + c["row_conflicts"] == bursts
    assert c["activations"] == c["row_misses"] + c["row_conflicts"]
    assert c["read_bytes"] == 4096 and c["write_bytes"] == 1000
    e = d.dynamic_energy_pj()
    assert e["activate"] == c["activations"] * PRESETS["ddr4-3200"]["activate_pj"]
    assert e["read"] == c["read_bursts"] * s.read_burst_pj
    assert e["io"] == bursts * 64 * s.io_pj_per_byte
    # DDR4 IDD rule by hand: VDD * (IDD0 tRC - IDD3N tRAS - IDD2N tRP) * 8 devices
    assert s.activate_pj == pytest.approx(1.2 * (57 * 46.25 - (52 * 32.5 + 37 * 13.75)) * 8)


def test_address_decoding_matches_the_mapping():
    _, d = make("hbm2")
    s = d.spec
    rng = np.random.default_rng(3)
    fields = {"row": rng.integers(0, s.rows_per_bank, 200), "bankgroup": rng.integers(0, 4, 200),
              "bank": rng.integers(0, 4, 200), "channel": rng.integers(0, 8, 200),
              "column": rng.integers(0, s.row_bytes // s.burst_bytes, 200)}
    addrs = np.array([encode(s, **{k: int(v[i]) for k, v in fields.items()}) for i in range(200)])
    got = d.decode(addrs // s.burst_bytes)
    for k in ("row", "channel", "column", "bankgroup"):
        assert np.array_equal(got[k], fields[k]), k
    assert np.array_equal(got["bank"], fields["bankgroup"] * 4 + fields["bank"])


def test_hbm2_spreads_a_request_over_channels():
    env, d = make("hbm2")
    s = d.spec
    nbytes = 8 * s.row_bytes  # one 1 KB page in each of the 8 channels
    lat = timed(env, d, 0, nbytes)
    per_channel = s.row_bytes / s.burst_bytes * s.t_burst_ns
    assert lat == pytest.approx(s.trcd_ns + s.cl_ns + per_channel, abs=1e-9)
    assert all(busy > 0 for busy in d.extra_report()["channel_busy_ns"])


def test_frfcfs_groups_rows_that_fcfs_ping_pongs():
    """Pieces alternating between two rows of one bank: FCFS reopens the row every time, FR-FCFS (seeing the
    whole queue of the bank) twice."""
    results = {}
    for sched in ("fcfs", "frfcfs"):
        env, d = make("lpddr4-3200", scheduler=sched, bank_queue_depth=32)
        s = d.spec
        a, b = encode(s, row=1), encode(s, row=2)
        where = tuple(MemAccess(x + i * s.burst_bytes, s.burst_bytes) for i in range(16) for x in (a, b))
        out = {}

        def proc(env=env, d=d, where=where, out=out, nbytes=32 * s.burst_bytes):
            yield from hold(env, d.access(nbytes, False, where), "p")
            out["t"] = env.now

        env.process(proc())
        env.run()
        results[sched] = (out["t"], d.counts["activations"])
    assert results["fcfs"][1] == 32 and results["frfcfs"][1] == 2
    assert results["frfcfs"][0] < results["fcfs"][0] / 3


def test_requests_are_granted_in_arrival_order_across_channels():
    """Two transfers issued at the same instant, the second touching only a channel the first also needs:
    the controller serves the first first, nothing deadlocks, and channel busy time stays within the run."""
    env, d = make("hbm2")
    s = d.spec
    done = []

    def proc(name, where, nbytes):
        yield from hold(env, d.access(nbytes, False, where), name)
        done.append((name, env.now))

    both = (MemAccess(0, 2 * s.row_bytes),)          # channels 0 and 1
    second = (MemAccess(s.row_bytes, s.row_bytes),)  # channel 1 only
    env.process(proc("a", both, 2 * s.row_bytes))
    env.process(proc("b", second, s.row_bytes))
    env.run()
    assert [n for n, _ in done] == ["a", "b"]
    busy = d.extra_report()["channel_busy_ns"]
    assert busy[1] <= env.now + 1e-9


def test_bad_organization_and_mapping_are_config_errors():
    with pytest.raises(ConfigError, match="dram.address_mapping"):
        resolve_spec(DramConfig(kind="banked", address_mapping="row:bank:colum"))
    with pytest.raises(ConfigError, match="dram.address_mapping.*lacks"):
        resolve_spec(DramConfig(kind="banked", preset="ddr4-3200", address_mapping="row:bank:column"))
    with pytest.raises(ConfigError, match="dram.banks_per_channel: expected a power of two"):
        resolve_spec(DramConfig(kind="banked", banks_per_channel=6))
    with pytest.raises(ConfigError, match="dram.row_bytes: expected a multiple"):
        resolve_spec(DramConfig(kind="banked", row_bytes=40))


def test_schema_lists_exactly_the_presets():
    field = next(f for f in dataclasses.fields(DramConfig) if f.name == "preset")
    assert tuple(field.metadata["choices"]) == tuple(PRESETS)
    for name in PRESETS:
        spec = resolve_spec(DramConfig(kind="banked", preset=name))
        assert spec.t_burst_ns == pytest.approx(spec.burst_bytes / (spec.peak_gb_per_s / spec.channels))


def test_banked_dram_in_the_soc_counts_the_demanded_bytes(paper_cfg, small_trace):
    from soc.dataflow import demand, traffic_totals
    from soc.simulate import shape_of, simulate

    cfg = dataclasses.replace(paper_cfg, dram=DramConfig(kind="banked", preset="ddr4-3200", refresh=True))
    res = simulate(cfg, small_trace)
    expect = traffic_totals(demand(res.functional.chunks, cfg, shape_of(small_trace), res.stats.placement),
                            res.stats.placement)
    r = res.report
    for key in ("dram_read_bytes", "dram_write_bytes"):
        assert r["traffic"][key] == pytest.approx(expect[key])
    ex = res.stats.blocks["dram"].extra_report()
    assert 0.0 <= ex["row_hit_rate"] <= 1.0
    assert ex["bytes_moved"] >= expect["dram_read_bytes"] + expect["dram_write_bytes"]
    assert r["utilization"]["dram"] <= 1.0
    assert all(b <= r["time"]["latency_ns"] * (1 + 1e-12) for b in ex["channel_busy_ns"])


@pytest.mark.parametrize("preset,policy,sched", [("ddr4-3200", "open", "frfcfs"),
                                                 ("lpddr4-3200", "closed", "fcfs"),
                                                 ("hbm2", "open", "fcfs"), ("ddr4-3200", "closed", "frfcfs")])
def test_python_and_vector_schedulers_agree(monkeypatch, preset, policy, sched):
    """The two implementations of the in-order path (short requests: a loop; long: numpy) give identical
    timing, counters and bank state on the same random mix of streams, scattered pieces and writes."""
    import soc.hw.dram_controller as ctl
    import soc.hw.dram_inorder as mod

    monkeypatch.setattr(ctl, "LIST_LIMIT", 0)  # every request through the in-order path
    runs = []
    for small in (10**9, 0):
        monkeypatch.setattr(mod, "SMALL_REQUEST_BURSTS", small)
        env, d = make(preset, page_policy=policy, scheduler=sched, refresh=True)
        rng = np.random.default_rng(7)
        durations = []

        def proc(env=env, d=d, rng=rng, durations=durations):
            for _ in range(60):
                base = int(rng.integers(0, 1 << 22)) * 64
                pieces = int(rng.integers(1, 40))
                where = (MemAccess(base, 64.0 * pieces, pieces, 64.0 * pieces * int(rng.integers(1, 5))),
                         MemAccess(base + (1 << 23), 64.0 * pieces, pieces, 128.0 * pieces))
                jobs = d.access(128.0 * pieces, bool(rng.integers(0, 4) == 0), where)
                t0 = env.now
                yield from hold(env, jobs, "m")
                durations.append(env.now - t0)
                yield env.timeout(float(rng.integers(0, 3)) * 100.0)

        env.process(proc())
        env.run()
        state = [(c.open_row, c.act_ns, c.lastop_ns) for c in d.chans]
        runs.append((durations, dict(d.counts), state, env.now))
    (dur_a, cnt_a, state_a, end_a), (dur_b, cnt_b, state_b, end_b) = runs
    assert cnt_a == cnt_b
    assert end_a == pytest.approx(end_b, abs=1e-6)
    assert dur_a == pytest.approx(dur_b, abs=1e-6)
    assert state_a == state_b


def test_scattered_rows_land_on_row_slots_without_overfetch():
    """Kept K rows (pieces) spread over a key tile stay row-aligned: 64-byte rows in 32-byte bursts cost
    exactly two bursts each, and the bursts lie inside the tile's span."""
    _, d = make("lpddr4-3200")
    where = (MemAccess(1 << 20, 90 * 64.0, 90, 128 * 64.0),)
    idx = d.bursts(where)
    assert len(idx) == 90 * 2 and len(np.unique(idx)) == len(idx)
    assert idx.min() * 32 >= 1 << 20 and (idx.max() + 1) * 32 <= (1 << 20) + 128 * 64
    assert np.all((idx[::2] * 32 - (1 << 20)) % 64 == 0)  # each row starts on a row slot


def test_each_channel_is_claimed_on_its_own():
    """A request over channels 0 and 1 while channel 0 is busy with a long transfer: its channel-1 part is
    served at once (a miss on an idle channel), not from a common start after channel 0 frees."""
    env, d = make("hbm2")
    s = d.spec
    parts = {}

    def proc(name, where, nbytes):
        jobs = d.access(nbytes, False, where)
        parts[name] = {ch.port.name: p for ch, p in jobs[0][0].parts}
        yield from hold(env, jobs, name)

    long_ch0 = tuple(MemAccess(encode(s, channel=0, row=r), s.row_bytes) for r in range(1, 9))
    env.process(proc("long", long_ch0, 8 * s.row_bytes))
    both = (MemAccess(encode(s, channel=0, row=20), s.burst_bytes),
            MemAccess(encode(s, channel=1, row=20), s.burst_bytes))
    env.process(proc("both", both, 2 * s.burst_bytes))
    env.run()
    ch0, ch1 = parts["both"]["dram.ch0"], parts["both"]["dram.ch1"]
    assert ch1.end_ns == pytest.approx(s.trcd_ns + s.cl_ns + s.t_burst_ns, abs=1e-9)
    assert ch0.end_ns > parts["long"]["dram.ch0"].first_ns + 8 * s.row_bytes / s.burst_bytes * s.t_burst_ns / 2


def _alternating_rows(d, n, depth_env):
    """``n`` one-burst reads at t=0 alternating between rows 1 and 2 of bank 0; returns the finish time."""
    env = depth_env
    s = d.spec
    out = []

    def one(i):
        a = encode(d.spec, row=1 + i % 2, column=i // 2)
        yield from hold(env, d.access(s.burst_bytes, False, (MemAccess(a, s.burst_bytes),)), "r")
        out.append(env.now)

    for i in range(n):
        env.process(one(i))
    env.run()
    return max(out)


def test_frfcfs_reorders_across_requests_within_the_queue_depth():
    """Requests alternating between two rows of one bank, issued at once: the first two are scheduled on
    arrival (the bank is within a row cycle of idle), the other 14 queue and FR-FCFS serves each row's hits
    together (3 activates in all); a queue of depth 1 cannot reorder (one activate per request)."""
    results = {}
    for depth in (1, 32):
        env, d = make("ddr4-3200", queue_depth=depth, bank_queue_depth=32)
        results[depth] = (_alternating_rows(d, 16, env), d.counts["activations"])
    assert results[32][1] == 3
    assert results[1][1] == 16
    assert results[32][0] < results[1][0] / 3


def test_activates_of_idle_banks_go_ahead_of_a_busy_bank():
    """Two conflicts queued on bank 0, then a miss on bank 1: bank 1 activates without waiting for bank 0's
    row cycles, so its data comes back after tRCD + CL + burst."""
    env, d = make("ddr4-3200")
    s = d.spec
    done = {}

    def one(name, a):
        yield from hold(env, d.access(s.burst_bytes, False, (MemAccess(a, s.burst_bytes),)), name)
        done[name] = env.now

    env.process(one("b0r1", encode(s, row=1)))
    env.process(one("b0r2", encode(s, row=2)))
    env.process(one("b1", encode(s, row=3, bank=1)))
    env.run()
    assert done["b1"] == pytest.approx(s.trcd_ns + s.cl_ns + s.t_burst_ns + s.trrd_s_ns, abs=s.t_burst_ns + 1e-9)
    assert done["b0r2"] >= s.tras_ns + s.trp_ns + s.trcd_ns + s.cl_ns


def test_writes_are_buffered_and_drained_in_batches():
    """Posted writes: below the low watermark they stay buffered; above it they drain once the bus is idle; a
    read-read-write stream is faster with the buffer than with every write going straight to the banks."""
    env, d = make("ddr4-3200")
    s = d.spec
    scheduled = lambda: d.counts["row_hits"] + d.counts["row_misses"] + d.counts["row_conflicts"]  # noqa: E731

    def writes(n, base):
        for i in range(n):
            a = base + i * s.burst_bytes
            yield from hold(env, d.access(s.burst_bytes, True, (MemAccess(a, s.burst_bytes),)), "w")

    env.process(writes(4, 0))
    env.run()
    assert scheduled() == 0  # 4 <= write_low_watermark: still in the buffer
    env.process(writes(12, 1 << 20))
    env.run()
    # the 9th buffered write passes the low watermark with the bus idle: those 9 drain, 7 stay buffered
    assert scheduled() == 9
    assert sum(len(p.bank) for p in d.chans[0].writes) == 7
    times = {}
    for high in (0, 32):
        env, d = make("ddr4-3200", write_high_watermark=high)

        def rrw(env=env, d=d):
            for i in range(300):
                a = i * s.burst_bytes
                yield from hold(env, d.access(s.burst_bytes, i % 3 == 2, (MemAccess(a, s.burst_bytes),)), "x")

        env.process(rrw())
        env.run()
        times[high] = env.now
    assert times[32] < times[0]


def test_ranks_share_the_bus_with_a_switch_gap():
    """Two reads to open rows of different ranks, queued together: the second's data follows the first's
    burst after tRTRS; the same two reads within one rank follow after the burst alone (other bank group)."""
    for ranks, extra in ((2, "trtrs_ns"), (1, None)):
        env, d = make("ddr4-3200", ranks=ranks)
        s = d.spec
        a = encode(s, row=1)
        b = encode(s, row=1, rank=1) if ranks == 2 else encode(s, row=1, bankgroup=1)
        timed(env, d, a, s.burst_bytes)
        timed(env, d, b, s.burst_bytes, at=env.now + 1e3)
        t0 = env.now + 1e3
        done = []

        def one(x, t0=t0, env=env, d=d):
            yield env.timeout(t0 - env.now)
            yield from hold(env, d.access(s.burst_bytes, False, (MemAccess(x, s.burst_bytes),)), "r")
            done.append(env.now - t0)

        env.process(one(a))
        env.process(one(b))
        env.run()
        gap = s.t_burst_ns + (getattr(s, extra) if extra else 0.0)
        assert sorted(done) == pytest.approx([s.cl_ns + s.t_burst_ns, s.cl_ns + s.t_burst_ns + gap], abs=1e-9)


def test_hbm2_page_is_2_kb_in_legacy_mode():
    """JESD235A: a 128-bit legacy channel has a 2 KB page (a pseudo channel 1 KB): a sequential read stream
    opens one row per 32 bursts."""
    env, d = make("hbm2")
    s = d.spec
    assert s.row_bytes == 2048
    timed(env, d, 0, 64 * s.row_bytes)
    assert d.extra_report()["row_hit_rate"] == pytest.approx(1 - 1 / 32)
