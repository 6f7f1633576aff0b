"""A finished run's timeline as arrays: the spans kept by the filters, counters, and CIM -> digital flows.

Both writers (Chrome JSON, Perfetto protobuf) and the plots read this one model. Besides the token-buffer
occupancy the simulator records, two counters are derived here:

- DRAM bandwidth per channel: each DRAM span's bytes spread evenly over the span, integrated exactly over
  ``counter_bins`` equal bins of the written range (GB/s = bytes/ns);
- cumulative energy: each tile's dynamic energy from its demand (``soc.dataflow.demand``: MACs, compares,
  array-write bits, bytes per transfer) times the config's per-event energies, booked when the tile's CIM
  ``score`` span (analog side: scoring, array load, query/key traffic, keep bitmap) or digital ``attend`` span
  (fetch and digital side) ends, plus static power times time. Its final value is report.json's
  ``energy.total_j``; a block whose energy does not follow the per-tile rule here (a bank-level DRAM's
  activations and refreshes) is spread over the tiles by that rule, scaled to the block's own figure, and
  noted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soc.timeline.filters import KEY_FIELDS, TimelineFilter, TimelineSink, block_of

GROUP_ORDER = ("cim", "token_buffer", "digital", "sram", "dram", "interconnect")
# (label, block group) of the CIM span that produced a tile and of the digital span that used it; the same
# labels also mark the SRAM and link spans of those holds, which carry the same tile identity
FLOW_FROM, FLOW_TO = ("score", "cim"), ("attend", "digital")
_DRAM_CHANNEL = re.compile(r"^dram\.ch\d+$")


@dataclass
class Counter:
    """One counter track: samples (t_ns, value) of a step function that holds until the next sample."""
    name: str
    unit: str
    t_ns: np.ndarray
    value: np.ndarray
    description: str = ""


@dataclass
class Timeline:
    """Spans are sorted by (start, end); ``keys[f][i]`` is -1 for spans that carry no tile identity."""
    tracks: list[str]
    track: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    label: np.ndarray            # index into ``labels``
    labels: list[str]
    nbytes: np.ndarray           # NaN where the span carries no byte count
    keys: dict[str, np.ndarray]
    flows: np.ndarray            # (n, 2) span indices: (CIM score span, digital attend span) of one tile
    counters: list[Counter]
    range_ns: tuple[float, float]
    latency_ns: float
    truncated: bool = False
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def span_count(self) -> int:
        return len(self.start_ns)

    def event_count(self) -> int:
        return self.span_count + sum(len(c.t_ns) for c in self.counters) + 2 * len(self.flows)

    def spans_of(self, track: str) -> tuple[np.ndarray, np.ndarray]:
        sel = self.track == self.tracks.index(track)
        return self.start_ns[sel], self.end_ns[sel]


def group_of(track: str) -> str:
    return block_of(track).rstrip("0123456789")


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def tile_spans(which: tuple[str, str], track: np.ndarray, tracks: list[str], label: np.ndarray,
               labels: list[str]) -> np.ndarray:
    """Mask of the spans labelled ``which[0]`` on tracks of block group ``which[1]``."""
    lab, group = which
    if lab not in labels:
        return np.zeros(len(track), dtype=bool)
    on = np.array([group_of(t) == group for t in tracks] + [False], dtype=bool)
    return (label == labels.index(lab)) & on[np.where(track >= 0, track, len(tracks))]


def track_order(names: list[str]) -> list[str]:
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    return sorted(names, key=lambda n: (rank.get(group_of(n), len(rank)), _natural(n)))


# --- derived counters ------------------------------------------------------------------------------------
def cumulative_bytes(start: np.ndarray, end: np.ndarray, nbytes: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bytes moved by time ``t`` when each span moves its bytes at a constant rate (exact, vectorized)."""
    t = np.asarray(t, dtype=np.float64)
    dur = end - start
    inst = dur <= 0
    out = np.zeros_like(t)
    if inst.any():  # zero-length spans: a step at their end
        e = np.sort(end[inst])
        csum = np.concatenate(([0.0], np.cumsum(nbytes[inst][np.argsort(end[inst])])))
        out += csum[np.searchsorted(e, t, side="right")]
    s, e, b = start[~inst], end[~inst], nbytes[~inst]
    if len(s):
        rate = b / (e - s)
        for edge, sign in ((s, 1.0), (e, -1.0)):  # sum r (t - s) over started spans, minus over finished ones
            order = np.argsort(edge)
            r_cum = np.concatenate(([0.0], np.cumsum(rate[order])))
            rx_cum = np.concatenate(([0.0], np.cumsum(rate[order] * edge[order])))
            k = np.searchsorted(edge[order], t, side="right")
            out += sign * (t * r_cum[k] - rx_cum[k])
    return out


def _bins(lo: float, hi: float, n: int) -> np.ndarray:
    return np.linspace(lo, hi, n + 1) if hi > lo else np.array([lo, lo])


def bandwidth_counters(tl_tracks: list[str], track: np.ndarray, start: np.ndarray, end: np.ndarray,
                       nbytes: np.ndarray, edges: np.ndarray, notes: list[str]) -> list[Counter]:
    """GB/s per DRAM channel over the bins ``edges`` (one sample per bin, at its start)."""
    chans = [i for i, n in enumerate(tl_tracks) if _DRAM_CHANNEL.match(n)]
    if not chans:
        chans = [i for i, n in enumerate(tl_tracks) if block_of(n) == "dram" and n.count(".") == 1]
    out = []
    width = np.diff(edges)
    for i in chans:
        sel = track == i
        b = nbytes[sel]
        missing = np.isnan(b)
        if missing.any():
            notes.append(f"{tl_tracks[i]}: {int(missing.sum())} spans carry no byte count; "
                         f"bandwidth omits them")
        ok = ~missing
        cum = cumulative_bytes(start[sel][ok], end[sel][ok], b[ok], edges)
        bw = np.divide(np.diff(cum), width, out=np.zeros_like(width), where=width > 0)
        out.append(Counter(f"{tl_tracks[i]}.bandwidth", "GB/s", edges[:-1].copy(), bw,
                           "bytes moved per ns (GB/s), each span's bytes spread evenly over the span"))
    return out


def chunk_energy_pj(result) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Dynamic energy of every tile by block group, split (CIM side, digital side), in pJ: the run's per-tile
    events (``soc.system.tile_events``, from its demand table) priced by each block's own cost rule."""
    from soc.system import tile_events

    stats = result.stats
    first = {}
    for name, block in stats.blocks.items():
        first.setdefault(name.rstrip("0123456789"), block)
    n = len(result.functional.chunks["layer"])
    out = {}
    for group, sides in tile_events(stats, result.functional.chunks, result.shape.heads, result.shape.kv_heads).items():
        block = first.get(group)
        priced = []
        for events in sides:
            pj = np.zeros(n)
            if block is not None and events:
                for v in block.energy_pj(events).values():
                    pj = pj + v
            priced.append(pj)
        out[group] = (priced[0], priced[1])
    return out


def energy_counter(result, keys: dict[str, np.ndarray], track: np.ndarray, tracks: list[str],
                   label: np.ndarray, labels: list[str], span_end: np.ndarray, edges: np.ndarray,
                   notes: list[str]) -> Counter | None:
    """Cumulative energy (uJ) at the bin edges, from per-tile energies booked at their spans' ends."""
    chunks = result.functional.chunks
    n = len(chunks["layer"])
    if n == 0:
        return None
    dims = tuple(int(max(chunks[f].max(), keys[f].max(initial=0))) + 1 for f in KEY_FIELDS[:4])
    ids = np.ravel_multi_index(tuple(chunks[f].astype(np.int64) for f in KEY_FIELDS[:4]), dims)
    order = np.argsort(ids)
    when = {}
    for which in (FLOW_FROM, FLOW_TO):
        t = np.full(n, np.nan)
        sel = tile_spans(which, track, tracks, label, labels) & (keys["layer"] >= 0)
        span_ids = np.ravel_multi_index(tuple(keys[f][sel] for f in KEY_FIELDS[:4]), dims)
        t[order[np.searchsorted(ids, span_ids, sorter=order)]] = span_end[sel]
        when[which] = t
    if np.isnan(when[FLOW_TO]).any():
        notes.append("energy counter omitted: it needs the digital 'attend' span of every tile "
                     "(keep the digital block in --timeline-blocks)")
        return None
    t_analog = np.where(np.isnan(when[FLOW_FROM]), when[FLOW_TO], when[FLOW_FROM])
    times, amounts = [], []
    untiled_j = 0.0  # energy a block's rule charges to no tile (e.g. DRAM activations, refresh): spread over time
    for group, (analog, digital) in chunk_energy_pj(result).items():
        block_j = sum(sum(r["energy_pj"].values()) for name, r in result.stats.results.items()
                      if name.rstrip("0123456789") == group) * 1e-12
        tiled_j = (analog.sum() + digital.sum()) * 1e-12
        rest = block_j - tiled_j
        if abs(rest) > 1e-9 * max(block_j, 1e-30):
            untiled_j += rest
            notes.append(f"energy counter: {rest * 1e6:.4g} uJ of {group} energy belongs to no tile (its rule "
                         f"counts events the demand table does not, e.g. DRAM activations); spread over the run")
        times += [t_analog, when[FLOW_TO]]
        amounts += [analog * 1e-12, digital * 1e-12]
    t_all, j_all = np.concatenate(times), np.concatenate(amounts)
    o = np.argsort(t_all, kind="stable")
    cum = np.concatenate(([0.0], np.cumsum(j_all[o])))
    dyn = cum[np.searchsorted(t_all[o], edges, side="right")]
    latency_ns = result.end_ns
    static_j = sum(r["static_mw"] for r in result.stats.results.values()) * 1e-3 * latency_ns * 1e-9
    frac = np.clip(edges / latency_ns, 0.0, 1.0) if latency_ns > 0 else np.ones_like(edges)
    total_uj = (dyn + (static_j + untiled_j) * frac) * 1e6
    return Counter("energy.cumulative", "uJ", edges.copy(), total_uj,
                   "dynamic energy of finished tiles plus static power x time (report.json energy.total_j at "
                   "the end)")


# --- building the model ----------------------------------------------------------------------------------
def _tile_hull(track: np.ndarray, start: np.ndarray, end: np.ndarray, keyed: np.ndarray, chosen: np.ndarray
               ) -> np.ndarray:
    """Merged time intervals (k, 2) while the chosen tiles are in flight: each chosen tile span widened to the
    end of the previous tile span and the start of the next one on its track (the transfers that feed and
    drain it), then merged per (layer, head) run."""
    idx = np.flatnonzero(keyed)
    if not chosen.any():
        return np.zeros((0, 2))
    lo, hi = start[idx].copy(), end[idx].copy()
    for tr in np.unique(track[idx]):
        on = np.flatnonzero(track[idx] == tr)  # already in start order
        prev_end = np.concatenate(([0.0], end[idx][on][:-1]))
        next_start = np.concatenate((start[idx][on][1:], [math.inf]))
        lo[on], hi[on] = np.minimum(lo[on], prev_end), np.maximum(hi[on], next_start)
    pick = chosen[idx]
    lo, hi = lo[pick], hi[pick]
    o = np.argsort(lo)
    lo, hi = lo[o], np.maximum.accumulate(hi[o])
    new = np.concatenate(([True], lo[1:] > hi[:-1]))
    starts = lo[new]
    ends = hi[np.concatenate((np.flatnonzero(new)[1:] - 1, [len(lo) - 1]))]
    return np.stack([starts, ends], axis=1)


def _in_intervals(start: np.ndarray, end: np.ndarray, iv: np.ndarray) -> np.ndarray:
    if len(iv) == 0:
        return np.zeros(len(start), dtype=bool)
    k = np.searchsorted(iv[:, 0], end, side="right") - 1  # last interval starting at or before the span's end
    return (k >= 0) & (start <= iv[np.maximum(k, 0), 1])


def build_timeline(sink: TimelineSink, result, filt: TimelineFilter | None = None) -> Timeline:
    """Apply the layer/head selection, the window and the event budget; derive counters and flows."""
    filt = filt or sink.filter
    report = result.report
    latency = float(report["time"]["latency_ns"])
    notes: list[str] = []
    n = sink.span_count
    track = np.frombuffer(sink.track, dtype=np.uint16).astype(np.int64) if n else np.zeros(0, np.int64)
    start, end = np.array(sink.start, dtype=np.float64), np.array(sink.end, dtype=np.float64)
    label = np.frombuffer(sink.label, dtype=np.uint16).astype(np.int64) if n else np.zeros(0, np.int64)
    nbytes = np.array(sink.nbytes, dtype=np.float64)
    keys = {f: np.full(n, -1, dtype=np.int64) for f in KEY_FIELDS}
    kidx = np.array(sink.keyed_span, dtype=np.int64)
    for f in KEY_FIELDS:
        keys[f][kidx] = np.array(sink.keys[f], dtype=np.int64)
    keyed = keys["layer"] >= 0
    if sink.dropped_over_limit:
        notes.append(f"recording stopped after {filt.record_limit:,} spans in memory "
                     f"({sink.dropped_over_limit:,} later spans dropped); narrow --timeline-window")

    # the whole run's energy needs every tile's timing: computed before the selection drops any
    lo_w, hi_w = filt.window_ns if filt.window_ns is not None else (0.0, math.inf)
    keep = (end >= lo_w) & (start <= hi_w)
    if filt.selects_tiles:
        chosen = keyed.copy()
        if filt.layers is not None:
            chosen &= np.isin(keys["layer"], list(filt.layers))
        if filt.heads is not None:
            chosen &= np.isin(keys["head"], list(filt.heads))
        if not keyed.any():
            notes.append("layer/head selection ignored: no CIM or digital track recorded to tell tiles apart")
        else:
            hull = _tile_hull(track, start, end, keyed, chosen)
            keep &= np.where(keyed, chosen, _in_intervals(start, end, hull))
            if not chosen.any():
                w = report["workload"]
                notes.append(f"layer/head selection matched no tile (the run has layers 0-{w['layers'] - 1}, "
                             f"heads 0-{w['heads'] - 1})")
    # counter samples in the window (raw, as the simulator sent them)
    c_track = np.array(sink.c_track, dtype=np.int64)
    c_time, c_value = np.array(sink.c_time, dtype=np.float64), np.array(sink.c_value, dtype=np.float64)
    c_keep = (c_time >= lo_w) & (c_time <= hi_w)
    hi = min(hi_w, latency)
    truncated = False
    budget = filt.budget
    if budget is not None and keep.sum() + c_keep.sum() > budget:
        times = np.sort(np.concatenate((start[keep], c_time[c_keep])))
        cut = times[budget]
        keep &= start < cut
        c_keep &= c_time < cut
        hi, truncated = min(hi, cut), True
        kept_n = int(keep.sum() + c_keep.sum())
        notes.append(f"truncated at {cut / 1e3:,.3f} us after {kept_n:,} events (budget {budget:,}; the run "
                     f"ends at {latency / 1e3:,.3f} us); raise --timeline-max-events or pick a "
                     f"--timeline-window")
    lo = max(0.0, lo_w)
    if lo > latency:
        notes.append(f"--timeline-window starts at {lo / 1e3:,.3f} us, after the run ended at "
                     f"{latency / 1e3:,.3f} us: nothing to show")
    hi = max(hi, lo)

    # spans kept, sorted by (start, end); tracks in display order
    sel = np.flatnonzero(keep)
    o = sel[np.lexsort((end[sel], start[sel]))]
    used = track_order([sink.tracks[i] for i in np.unique(track[o])])
    remap = np.full(max(len(sink.tracks), 1), -1, dtype=np.int64)
    for new_i, name in enumerate(used):
        remap[sink.tracks.index(name)] = new_i
    tl_track = remap[track[o]]
    tl_keys = {f: keys[f][o] for f in KEY_FIELDS}

    edges = _bins(lo, hi, filt.counter_bins)
    counters: list[Counter] = []
    for cid, name in enumerate(sink.counter_tracks):
        m = c_keep & (c_track == cid)
        t, v = c_time[m], c_value[m]
        before = np.flatnonzero((c_track == cid) & (c_time < lo))
        if lo > 0 and len(before):  # the value in force when the window opens
            t, v = np.concatenate(([lo], t)), np.concatenate(([c_value[before[-1]]], v))
        unit = "entries" if name.endswith("occupancy") else ""
        counters.append(Counter(name, unit, t, v, "recorded by the simulator at every change"))
    counters += bandwidth_counters(used, tl_track, start[o], end[o], nbytes[o], edges, notes)
    energy = energy_counter(result, keys, track, sink.tracks, label, sink.labels, end, edges, notes)
    if energy is not None:
        counters.append(energy)
    return Timeline(tracks=used, track=tl_track, start_ns=start[o], end_ns=end[o], label=label[o],
                    labels=list(sink.labels), nbytes=nbytes[o], keys=tl_keys,
                    flows=_flows(tl_keys, tl_track, used, label[o], sink.labels), counters=counters,
                    range_ns=(lo, hi),
                    latency_ns=latency, truncated=truncated, notes=notes,
                    meta={"config": report["config"].get("name"), "workload": report["workload"].get("model"),
                          "dropped_outside_window": sink.dropped_outside_window})


def _flows(keys: dict[str, np.ndarray], track: np.ndarray, tracks: list[str], label: np.ndarray,
           labels: list[str]) -> np.ndarray:
    """Pairs (CIM score span, digital attend span) of the same tile, both kept."""
    src = np.flatnonzero(tile_spans(FLOW_FROM, track, tracks, label, labels) & (keys["layer"] >= 0))
    dst = np.flatnonzero(tile_spans(FLOW_TO, track, tracks, label, labels) & (keys["layer"] >= 0))
    if not len(src) or not len(dst):
        return np.zeros((0, 2), dtype=np.int64)
    dims = tuple(int(keys[f].max()) + 1 for f in KEY_FIELDS[:4])
    sid = np.ravel_multi_index(tuple(keys[f][src] for f in KEY_FIELDS[:4]), dims)
    did = np.ravel_multi_index(tuple(keys[f][dst] for f in KEY_FIELDS[:4]), dims)
    so = np.argsort(sid)
    pos = np.searchsorted(sid, did, sorter=so)
    ok = pos < len(sid)
    ok[ok] = sid[so[pos[ok]]] == did[ok]
    return np.stack([src[so[pos[ok]]], dst[ok]], axis=1).astype(np.int64)
