"""Native Perfetto protobuf (``.pftrace``) written with the ``perfetto`` package's ``TraceProtoBuilder``.

One TrackDescriptor per block group (cim, digital, sram, ...) with a child track per block instance or port,
and a "counters" group holding the counter tracks (token-buffer occupancy, DRAM bandwidth, cumulative energy).
Spans are TrackEvent slice begin/end pairs; a tile's CIM ``score`` slice carries a flow id that its digital
``attend`` slice terminates. Event and argument names are interned (sent once per trace), so a span costs
about 60 bytes.

Perfetto timestamps are integer nanoseconds; simulated times are not (an SRAM access lasts 0.91 ns at
1.1 GHz). Each endpoint is rounded to the nearest ns, which keeps order (touching spans stay touching, none
overlap), and every slice carries its exact duration in the ``dur_ns`` argument, so per-track sums match
report.json exactly.
"""

from __future__ import annotations

import io
import os
from typing import IO

import numpy as np

from soc.errors import SocError
from soc.io import atomic_open
from soc.timeline.model import GROUP_ORDER, Timeline, group_of

SEQ_ID = 1
BATCH_PACKETS = 20_000
ARG_NAMES = ("layer", "head", "qtile", "ktile", "kept", "bytes", "dur_ns")


def _pb():
    try:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
        from perfetto.trace_builder.proto_builder import TraceProtoBuilder
    except ImportError:
        raise SocError("--timeline *.pftrace needs the perfetto and protobuf packages: "
                       "pip install -e '.[timeline]' in the soc checkout (or write a .json Chrome trace)") from None
    return pb, TraceProtoBuilder


class _Batches:
    """TraceProtoBuilders of at most ``size`` packets, each serialized to ``out`` when full: serialized Trace
    messages concatenate into one Trace (``packet`` is a repeated field), so memory stays bounded."""

    def __init__(self, make, out: IO[bytes], size: int = BATCH_PACKETS) -> None:
        self.make, self.out, self.size = make, out, size
        self.builder, self.count = make(), 0

    def add_packet(self):
        if self.count == self.size:
            self.flush()
        self.count += 1
        return self.builder.add_packet()

    def flush(self) -> None:
        if self.count:
            self.out.write(self.builder.serialize())
        self.builder, self.count = self.make(), 0


def write_perfetto(path: str | os.PathLike[str], tl: Timeline) -> int:
    """Write ``tl`` as a Perfetto protobuf trace, atomically; returns the number of timeline events (spans,
    counter samples, flow ends), as the Chrome writer does."""
    with atomic_open(path, "wb") as fh:
        write_trace(tl, fh)
    return tl.event_count()


def build_trace(tl: Timeline) -> bytes:
    """The whole trace as bytes (for small timelines and tests)."""
    buf = io.BytesIO()
    write_trace(tl, buf)
    return buf.getvalue()


def write_trace(tl: Timeline, out: IO[bytes]) -> None:
    pb, TraceProtoBuilder = _pb()
    TE = pb.TrackEvent
    builder = _Batches(TraceProtoBuilder, out)
    needs = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE

    # interned names, sent once at the head of the sequence
    first = builder.add_packet()
    first.trusted_packet_sequence_id = SEQ_ID
    first.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED | needs
    for i, lab in enumerate(tl.labels):
        first.interned_data.event_names.add(iid=i + 1, name=lab)
    for i, name in enumerate(ARG_NAMES):
        first.interned_data.debug_annotation_names.add(iid=i + 1, name=name)
    arg_iid = {name: i + 1 for i, name in enumerate(ARG_NAMES)}

    # track tree: group -> instance; counters under their own group
    groups = sorted({group_of(t) for t in tl.tracks}, key=lambda g: (GROUP_ORDER + (g,)).index(g))
    uuid_of_group = {g: 1000 + i for i, g in enumerate([*groups, "counters"])}
    for rank, (g, uuid) in enumerate(uuid_of_group.items()):
        p = builder.add_packet()
        p.track_descriptor.uuid = uuid
        p.track_descriptor.name = g
        if g == "counters":  # the run's caveats travel with the file
            lo_us, hi_us, end_us = tl.range_ns[0] / 1e3, tl.range_ns[1] / 1e3, tl.latency_ns / 1e3
            run = (f"{tl.meta.get('config')} on {tl.meta.get('workload')}, "
                   f"range {lo_us:,.3f}-{hi_us:,.3f} us of {end_us:,.3f} us")
            p.track_descriptor.description = "; ".join([run, *tl.notes])
        p.track_descriptor.child_ordering = pb.TrackDescriptor.EXPLICIT
        p.track_descriptor.sibling_order_rank = rank
    track_uuid = []
    for rank, name in enumerate(tl.tracks):
        p = builder.add_packet()
        p.track_descriptor.uuid = 10_000 + rank
        p.track_descriptor.parent_uuid = uuid_of_group[group_of(name)]
        p.track_descriptor.name = name
        p.track_descriptor.sibling_order_rank = rank
        track_uuid.append(10_000 + rank)
    counter_uuid = []
    for rank, c in enumerate(tl.counters):
        p = builder.add_packet()
        uuid = 20_000 + rank
        p.track_descriptor.uuid = uuid
        p.track_descriptor.parent_uuid = uuid_of_group["counters"]
        p.track_descriptor.name = f"{c.name} ({c.unit})" if c.unit else c.name
        p.track_descriptor.description = c.description
        p.track_descriptor.sibling_order_rank = rank
        p.track_descriptor.counter.unit_name = c.unit
        counter_uuid.append(uuid)

    # every event with a sort key (ts, tie): a span's end sorts before the next span's begin on its track
    n = tl.span_count
    begin = np.rint(tl.start_ns).astype(np.int64)
    end = np.rint(tl.end_ns).astype(np.int64)
    c_ts = [np.rint(c.t_ns).astype(np.int64) for c in tl.counters]
    ts = np.concatenate([begin, end, *c_ts]) if n or c_ts else np.zeros(0, np.int64)
    tie = np.concatenate([2 * np.arange(n), 2 * np.arange(n) + 1,
                          *[2 * n + np.arange(len(t)) for t in c_ts]]).astype(np.int64)
    order = np.lexsort((tie, ts))
    flow_out = {int(a): k + 1 for k, (a, _) in enumerate(tl.flows.tolist())}
    flow_in = {int(b): k + 1 for k, (_, b) in enumerate(tl.flows.tolist())}
    c_owner = np.concatenate([np.full(len(t), j) for j, t in enumerate(c_ts)]) if c_ts else np.zeros(0)
    c_index = np.concatenate([np.arange(len(t)) for t in c_ts]) if c_ts else np.zeros(0)

    tracks, labels, keyed = tl.track.tolist(), tl.label.tolist(), (tl.keys["layer"] >= 0).tolist()
    key_cols = {f: tl.keys[f].tolist() for f in ("layer", "head", "qtile", "ktile", "kept")}
    nbytes, dur = tl.nbytes.tolist(), (tl.end_ns - tl.start_ns).tolist()
    ts_l, begin_n = ts.tolist(), n
    for e in order.tolist():
        p = builder.add_packet()
        p.timestamp = ts_l[e]
        p.trusted_packet_sequence_id = SEQ_ID
        p.sequence_flags = needs
        ev = p.track_event
        if e < begin_n:  # slice begin
            ev.type = TE.TYPE_SLICE_BEGIN
            ev.track_uuid = track_uuid[tracks[e]]
            ev.name_iid = labels[e] + 1
            if keyed[e]:
                for f, col in key_cols.items():
                    ev.debug_annotations.add(name_iid=arg_iid[f], int_value=col[e])
            elif nbytes[e] == nbytes[e]:
                ev.debug_annotations.add(name_iid=arg_iid["bytes"], double_value=nbytes[e])
            ev.debug_annotations.add(name_iid=arg_iid["dur_ns"], double_value=dur[e])
            if e in flow_out:
                ev.flow_ids.append(flow_out[e])
            if e in flow_in:
                ev.terminating_flow_ids.append(flow_in[e])
        elif e < 2 * begin_n:  # slice end
            ev.type = TE.TYPE_SLICE_END
            ev.track_uuid = track_uuid[tracks[e - n]]
        else:
            j = e - 2 * n
            owner = int(c_owner[j])
            ev.type = TE.TYPE_COUNTER
            ev.track_uuid = counter_uuid[owner]
            ev.double_counter_value = float(tl.counters[owner].value[int(c_index[j])])
    builder.flush()
