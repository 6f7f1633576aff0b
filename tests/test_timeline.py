"""Timelines read back from disk: Chrome JSON through json, Perfetto protobuf through the perfetto package's
bundled protos. Every span track is a unit-capacity port, so its spans never overlap, and they add up to the
port's busy time in report.json; counters reproduce what the simulator recorded and integrate to the report's
totals."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from soc.errors import ConfigError
from soc.recorder import Recorder
from soc.simulate import simulate
from soc.timeline import (TimelineFilter, TimelineSink, build_timeline, parse_index_set, parse_patterns,
                          parse_window, timeline_format, write_timeline)
from soc.timeline.filters import block_of
from soc.timeline.model import chunk_energy_pj, cumulative_bytes

OCC = "token_buffer0.occupancy"


# --- readers (independent of the writers) -------------------------------------------------------------------
def read_chrome(path):
    doc = json.loads(path.read_text())
    names = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "M" and e["name"] == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
    spans, counters, flows = defaultdict(list), defaultdict(list), defaultdict(dict)
    ps = lambda us: int(round(us * 1e6))  # noqa: E731  (the writer rounds to the picosecond)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            spans[names[(e["pid"], e["tid"])]].append((ps(e["ts"]), ps(e["dur"]), e["name"], e["args"]))
        elif e["ph"] == "C":
            (value,) = e["args"].values()
            counters[e["name"]].append((ps(e["ts"]), value))
        elif e["ph"] in "sf":
            flows[e["id"]][e["ph"]] = (names[(e["pid"], e["tid"])], ps(e["ts"]))
    return doc, spans, counters, flows


def read_pftrace(path):
    pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")
    trace = pb.Trace()
    trace.ParseFromString(path.read_bytes())
    names, event_names, arg_names = {}, {}, {}
    spans, counters, open_ = defaultdict(list), defaultdict(list), {}
    flows_out, flows_in = {}, {}
    for p in trace.packet:
        for n in p.interned_data.event_names:
            event_names[n.iid] = n.name
        for n in p.interned_data.debug_annotation_names:
            arg_names[n.iid] = n.name
        if p.HasField("track_descriptor"):
            names[p.track_descriptor.uuid] = p.track_descriptor.name
        if not p.HasField("track_event"):
            continue
        ev = p.track_event
        track = names[ev.track_uuid]
        if ev.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            assert ev.track_uuid not in open_, f"nested slice on {track}"
            args = {arg_names[a.name_iid]: (a.int_value if a.HasField("int_value") else a.double_value)
                    for a in ev.debug_annotations}
            open_[ev.track_uuid] = (p.timestamp, event_names[ev.name_iid], args)
            for f in ev.flow_ids:
                flows_out[f] = (track, args)
            for f in ev.terminating_flow_ids:
                flows_in[f] = (track, args)
        elif ev.type == pb.TrackEvent.TYPE_SLICE_END:
            ts, name, args = open_.pop(ev.track_uuid)
            spans[track].append((ts, p.timestamp - ts, name, args))
        elif ev.type == pb.TrackEvent.TYPE_COUNTER:
            counters[track.split(" (")[0]].append((p.timestamp, ev.double_counter_value))
    assert not open_, "slices left open"
    return spans, counters, flows_out, flows_in


def port_busy(result, track):
    """The busy time report.json gives a track's port: its own entry, else its block's when the block has one
    port (``dram`` for ``dram.ch0``); a multi-port block's port falls back to the simulator's port counter."""
    busy = result.report["time"]["busy_ns"]
    if track in busy:
        return busy[track]
    block = result.stats.blocks[block_of(track)]
    if len(block.ports) == 1:
        return busy[block_of(track)]
    return next(p.busy_ns for p in block.ports if p.name == track)


# --- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(paper_cfg, small_trace):
    sink = TimelineSink(TimelineFilter(max_events=0))
    result = simulate(paper_cfg, small_trace, recorder=Recorder(sink))
    return sink, result, build_timeline(sink, result)


@pytest.fixture(scope="module")
def files(run, tmp_path_factory):
    _, _, tl = run
    d = tmp_path_factory.mktemp("timeline")
    assert write_timeline(d / "run.json", tl) == tl.event_count()
    try:  # the Perfetto test skips without the [timeline] extra; the JSON ones still run
        import perfetto  # noqa: F401
    except ImportError:
        return d
    assert write_timeline(d / "run.pftrace", tl) == tl.event_count()
    return d


# --- Chrome JSON ------------------------------------------------------------------------------------------
def test_chrome_spans_never_overlap_on_a_unit_capacity_port(files):
    _, spans, _, _ = read_chrome(files / "run.json")
    assert {"cim0", "digital0", "dram.ch0", "sram.bank0", "interconnect.dram->sram"} <= set(spans)
    for track, items in spans.items():
        items.sort()
        ends = np.array([ts + dur for ts, dur, _, _ in items[:-1]])
        starts = np.array([ts for ts, _, _, _ in items[1:]])
        assert (starts >= ends).all(), track


def test_chrome_span_durations_sum_to_busy_time_in_report(run, files):
    _, result, _ = run
    busy = result.report["time"]["busy_ns"]
    _, spans, _, _ = read_chrome(files / "run.json")
    for track, items in spans.items():
        total_ns = sum(dur for _, dur, _, _ in items) / 1e3
        # endpoints are rounded to 1 ps, so each duration is within 1 ps of the simulator's
        assert total_ns == pytest.approx(port_busy(result, track), abs=1e-3 * len(items) + 1e-9), track
    # every port that worked has a track
    for name, b in busy.items():
        if b > 0 and name not in ("sram", "token_buffer0"):
            assert name in spans or any(block_of(t) == name for t in spans), name


def test_chrome_counter_is_the_recorded_occupancy(run, files):
    sink, result, _ = run
    _, _, counters, _ = read_chrome(files / "run.json")
    recorded = [(int(round(t * 1e3)), v) for t, v in sink.counter_samples(OCC)]
    assert counters[OCC] == recorded and len(recorded) == 2 * result.report["sim"]["chunks"]
    # independent of the sink: the step function's time average is the buffer's own occupancy accounting
    t = np.array([ts for ts, _ in counters[OCC]] + [round(result.report["time"]["latency_ns"] * 1e3)]) / 1e3
    v = np.array([val for _, val in counters[OCC]])
    depth = result.config.token_buffer.depth_entries
    mean = float((np.diff(t) * v).sum() / t[-1])
    assert mean == pytest.approx(result.report["utilization"]["token_buffer"] * depth, rel=1e-6)
    assert v.max() == result.stats.token_buffer_peak <= depth and v.min() == 0 and v[-1] == 0
    assert set(np.abs(np.diff(v))) <= {1.0}


def test_flows_join_each_tiles_scoring_to_its_exact_attention(run, files):
    _, result, _ = run
    _, spans, _, flows = read_chrome(files / "run.json")
    assert len(flows) == result.report["sim"]["chunks"]
    score = {(ts, tr): a for tr in ("cim0",) for ts, _, n, a in spans[tr] if n == "score"}
    attend = {(ts, tr): (ts, a) for tr in ("digital0",) for ts, _, n, a in spans[tr] if n == "attend"}
    score_end = {tuple(a[k] for k in ("layer", "head", "qtile", "ktile")): ts + d
                 for ts, d, n, a in spans["cim0"] if n == "score"}
    for ends in flows.values():
        (src_track, s_ts), (dst_track, f_ts) = ends["s"], ends["f"]
        a, (att_ts, b) = score[(s_ts, src_track)], attend[(f_ts, dst_track)]
        assert a == b  # same layer, head, tiles and kept count
        assert att_ts >= score_end[(a["layer"], a["head"], a["qtile"], a["ktile"])]  # causality


def test_dram_bandwidth_counter_integrates_to_dram_traffic(run):
    _, result, tl = run
    (bw,) = [c for c in tl.counters if c.name == "dram.ch0.bandwidth"]
    width = np.diff(np.append(bw.t_ns, tl.range_ns[1]))
    t = result.report["traffic"]
    assert (bw.value * width).sum() == pytest.approx(t["dram_read_bytes"] + t["dram_write_bytes"], rel=1e-9)
    assert bw.value.max() <= result.config.dram.bandwidth_gb_per_s * (1 + 1e-9)  # one channel's peak


def test_cumulative_bytes_against_direct_integration():
    rng = np.random.default_rng(3)
    s = rng.uniform(0, 100, 50)
    e = s + rng.choice([0.0, 0.5, 7.0], 50)
    b = rng.uniform(1, 64, 50)
    t = np.linspace(-1, 120, 77)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(e[None] > s[None], np.clip((t[:, None] - s) / (e - s), 0, 1), t[:, None] >= e)
    assert cumulative_bytes(s, e, b, t) == pytest.approx((frac * b).sum(axis=1), abs=1e-9)


def test_energy_counter_ends_at_report_total_and_never_falls(run):
    _, result, tl = run
    (energy,) = [c for c in tl.counters if c.name == "energy.cumulative"]
    assert energy.value[-1] * 1e-6 == pytest.approx(result.report["energy"]["total_j"], rel=1e-9)
    assert (np.diff(energy.value) >= 0).all() and energy.value[0] == 0.0
    # the per-tile rule agrees with every block's own counters (no rescaling was needed)
    e = result.report["energy"]
    for group, (analog, digital) in chunk_energy_pj(result).items():
        want = e["by_block"].get(group, 0.0) - e["static_by_block"].get(group, 0.0)
        assert (analog.sum() + digital.sum()) * 1e-12 == pytest.approx(want, rel=1e-9, abs=1e-18), group
    assert not [n for n in tl.notes if "scaled by" in n]


# --- Perfetto protobuf -------------------------------------------------------------------------------------
def test_pftrace_spans_match_report_and_never_overlap(run, files):
    sink, result, _ = run
    spans, counters, flows_out, flows_in = read_pftrace(files / "run.pftrace")
    assert {"cim0", "digital0", "dram.ch0", "sram.bank7"} <= set(spans)
    for track, items in spans.items():
        items.sort(key=lambda x: (x[0], x[0] + x[1]))
        ts = np.array([i[0] for i in items])
        te = ts + np.array([i[1] for i in items])
        assert (ts[1:] >= te[:-1]).all(), track
        exact = sum(i[3]["dur_ns"] for i in items)
        assert exact == pytest.approx(port_busy(result, track), rel=1e-9), track
        assert abs((te - ts).sum() - exact) <= len(items)  # endpoints rounded to whole ns
    recorded = [(int(round(t)), v) for t, v in sink.counter_samples(OCC)]
    assert counters[OCC] == recorded
    assert set(flows_out) == set(flows_in) and len(flows_out) == result.report["sim"]["chunks"]
    for f, (track, args) in flows_out.items():
        dst_track, dst_args = flows_in[f]
        assert (track, dst_track) == ("cim0", "digital0")
        assert {k: args[k] for k in ("layer", "head", "qtile", "ktile", "kept")} == \
               {k: dst_args[k] for k in ("layer", "head", "qtile", "ktile", "kept")}


# --- filters ----------------------------------------------------------------------------------------------
def test_block_patterns_leave_filtered_ports_without_callbacks(paper_cfg, small_trace):
    from soc.simulate import shape_of
    from soc.system import System

    sink = TimelineSink(TimelineFilter(blocks=parse_patterns("cim*,dram")))
    system = System(paper_cfg, shape_of(small_trace), Recorder(sink))
    assert system.cims[0].array._span is not None and system.dram.channel._span is not None
    assert all(p._span is None for p in system.sram.bank_ports)
    assert all(p._span is None for p in system.net.link_ports.values())
    assert system.digitals[0].macs._span is None and system.buffers[0]._counter is None


def test_window_layer_head_selection_and_event_budget(paper_cfg, small_trace, run, tmp_path):
    _, full_result, full = run
    # a window from the middle of layer 1 head 2 to the middle of head 5, in microseconds
    dig = full.track == full.tracks.index("digital0")
    at = lambda h: full.start_ns[dig & (full.keys["layer"] == 1) & (full.keys["head"] == h)]  # noqa: E731
    lo, hi = parse_window(f"{np.median(at(2)) / 1e3}:{np.median(at(5)) / 1e3}")
    sink = TimelineSink(TimelineFilter(window_ns=(lo, hi), layers=parse_index_set("1", "l"),
                                       heads=parse_index_set("0,2-3", "h"), max_events=0))
    result = simulate(paper_cfg, small_trace, recorder=Recorder(sink))
    tl = build_timeline(sink, result)
    assert tl.span_count > 0 and tl.range_ns == (lo, hi)
    assert ((tl.end_ns >= lo) & (tl.start_ns <= hi)).all()
    keyed = tl.keys["layer"] >= 0
    assert set(tl.keys["layer"][keyed]) == {1} and set(tl.keys["head"][keyed]) == {2, 3}
    # every selected tile the full run has in the window is there, CIM and digital side
    for track in ("cim0", "digital0"):
        on = full.track == full.tracks.index(track)
        want = on & (full.keys["layer"] == 1) & np.isin(full.keys["head"], [0, 2, 3]) \
            & (full.end_ns >= lo) & (full.start_ns <= hi)
        got = (tl.track == tl.tracks.index(track)) & keyed
        assert want.sum() > 10 and np.array_equal(tl.start_ns[got], full.start_ns[want])
    # untagged transfers are kept only while a selected tile is in flight: none after head 3's last job
    last = full.end_ns[dig & (full.keys["layer"] == 1) & (full.keys["head"] == 3)].max()
    nxt = full.start_ns[dig & (full.keys["layer"] == 1) & (full.keys["head"] == 4)].min()
    assert not (tl.start_ns > max(last, nxt)).any()
    # statistics never depend on the timeline
    assert result.report["time"] == full_result.report["time"]

    budget = 2000
    sink = TimelineSink(TimelineFilter(max_events=budget))
    result = simulate(paper_cfg, small_trace, recorder=Recorder(sink))
    cut_tl = build_timeline(sink, result)
    raw = cut_tl.span_count + sum(len(c.t_ns) for c in cut_tl.counters if c.name == OCC)
    assert cut_tl.truncated and raw <= budget and any("truncated" in n for n in cut_tl.notes)
    cut = cut_tl.range_ns[1]
    # the kept part is exactly the full timeline's prefix in time
    assert np.array_equal(cut_tl.start_ns, full.start_ns[full.start_ns < cut])
    write_timeline(tmp_path / "cut.json", cut_tl)
    assert json.loads((tmp_path / "cut.json").read_text())["otherData"]["truncated"] is True


@pytest.mark.parametrize("bad, call", [
    ("5:2", parse_window), ("a:b", parse_window), ("1:2:3", parse_window),
    ("x", lambda s: parse_index_set(s, "--timeline-layers")),
    ("3-1", lambda s: parse_index_set(s, "--timeline-heads")),
    (" , ", parse_patterns), ("out.txt", timeline_format),
])
def test_bad_filter_flags_raise_one_line_errors(bad, call):
    with pytest.raises(ConfigError, match="expected") as err:
        call(bad)
    assert "\n" not in str(err.value) and repr(bad).strip("'") in str(err.value)


def test_cli_writes_timeline_and_rejects_bad_extension_before_running(tmp_path, capsys):
    from soc.faces.cli import main
    from soc.trace import save_trace, synth_trace

    tiny = synth_trace("minilm-l6", seq_len=128, layers=1, seed=3)
    trace = save_trace(tmp_path / "t.npz", tiny.q, tiny.k, tiny.v, tiny.meta)
    out = str(tmp_path / "o")
    assert main(["run", "--trace", str(trace), "--out", out, "--timeline", str(tmp_path / "x.txt")]) == 2
    assert "x.txt" in capsys.readouterr().err and not (tmp_path / "o" / "report.json").exists()
    assert main(["run", "--trace", str(trace), "--out", str(tmp_path / "o"),
                 "--timeline", str(tmp_path / "t.json")]) == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    assert any(e["ph"] == "X" for e in doc["traceEvents"]) and doc["otherData"]["truncated"] is False
    assert "timeline" in capsys.readouterr().out


def test_filter_flags_from_the_cli_namespace():
    from argparse import Namespace

    from soc.timeline import DEFAULT_MAX_EVENTS, filter_from_args

    f = filter_from_args(Namespace(timeline_window="1.5:2", timeline_layers="0,3-4", timeline_heads=None,
                                   timeline_blocks="cim*, dram", timeline_max_events=0))
    assert f.window_ns == (1500.0, 2000.0) and f.layers == {0, 3, 4} and f.heads is None
    assert f.blocks == ("cim*", "dram") and f.budget is None
    assert f.wants_track("cim0") and f.wants_track("dram.ch0") and not f.wants_track("sram.bank0")
    plain = filter_from_args(Namespace(timeline="x.json"))  # a parser without the filter flags
    assert plain.window_ns is None and plain.blocks == ("*",) and plain.budget == DEFAULT_MAX_EVENTS
    with pytest.raises(ConfigError, match="--timeline-max-events"):
        filter_from_args(Namespace(timeline_max_events=-1))


def test_no_timeline_means_no_callback_anywhere(paper_cfg, small_trace):
    from argparse import Namespace

    from soc.faces.cli import _timeline
    from soc.recorder import OFF
    from soc.simulate import shape_of
    from soc.system import System

    recorder, finish = _timeline(Namespace(timeline=None, plots=None))
    assert recorder is OFF and finish is None
    system = System(paper_cfg, shape_of(small_trace), recorder)
    ports = [p for b in system.blocks.values() for p in b.ports] + list(system.net.link_ports.values())
    assert ports and all(p._span is None for p in ports)
    assert all(b._counter is None for b in system.buffers) and system._move_args is False
