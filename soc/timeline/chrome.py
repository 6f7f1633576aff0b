"""Chrome trace-event JSON (the format chrome://tracing and ui.perfetto.dev open).

Layout: one process per block group (cim, token_buffer, digital, sram, dram, interconnect, counters), one
thread per block instance or port (``cim0``, ``sram.bank3``, ``interconnect.dram->sram``). Spans are
complete events (``"ph": "X"``) with their tile identity or byte count in ``args``; counters are
``"ph": "C"`` samples; a flow (``"s"`` at the CIM ``score`` span, ``"f"`` bound to the enclosing digital
``attend`` span) links the scoring of a tile to the exact attention computed from it. Times are
microseconds, as the format requires, rounded to the picosecond (6 decimals): endpoints are rounded, never
durations, so spans that touch stay touching and never overlap.
"""

from __future__ import annotations

import json
import os
from typing import IO, Iterator

import numpy as np

from soc.io import atomic_open
from soc.timeline.model import GROUP_ORDER, Timeline, group_of

COUNTER_PROCESS = "counters"


def _us(ps: int) -> str:
    """Integer picoseconds as a microsecond literal without trailing zeros."""
    neg, ps = ps < 0, abs(ps)
    whole, frac = divmod(ps, 1_000_000)
    text = f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)
    return "-" + text if neg else text


def _ps(ns: np.ndarray) -> list[int]:
    return np.rint(np.asarray(ns, dtype=np.float64) * 1e3).astype(np.int64).tolist()


def _num(x: float) -> str:
    return json.dumps(int(x)) if float(x).is_integer() and abs(x) < 2**53 else json.dumps(float(x))


def processes(tl: Timeline) -> dict[str, int]:
    groups = sorted({group_of(t) for t in tl.tracks}, key=lambda g: (GROUP_ORDER + (g,)).index(g))
    return {g: i + 1 for i, g in enumerate([*groups, COUNTER_PROCESS])}


def write_chrome(path: str | os.PathLike[str], tl: Timeline) -> int:
    """Write ``tl`` as Chrome trace JSON, atomically; returns the number of trace events written."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        return _write(fh, tl)


def _write(fh: IO[str], tl: Timeline) -> int:
    other = {"generator": "soc", "time_unit": "us", "range_us": [tl.range_ns[0] / 1e3, tl.range_ns[1] / 1e3],
             "latency_us": tl.latency_ns / 1e3, "truncated": tl.truncated, "notes": tl.notes,
             **{k: v for k, v in tl.meta.items() if v is not None},
             "counters": {c.name: {"unit": c.unit, "description": c.description} for c in tl.counters}}
    fh.write('{"displayTimeUnit":"ns","otherData":')
    fh.write(json.dumps(other))
    fh.write(',"traceEvents":[\n')
    written, batch, sep = 0, [], ""
    for line in _lines(tl):  # streamed in batches: a capped BERT-base timeline is ~200K lines
        batch.append(line)
        written += not line.startswith('{"ph": "M"')  # metadata (names, order) are not events
        if len(batch) == 20_000:
            fh.write(sep + ",\n".join(batch))
            batch, sep = [], ",\n"
    if batch:
        fh.write(sep + ",\n".join(batch))
    fh.write("\n]}\n")
    return written


def _lines(tl: Timeline) -> Iterator[str]:
    pids = processes(tl)
    tid_of = {name: i + 1 for i, name in enumerate(tl.tracks)}
    pid_of = {name: pids[group_of(name)] for name in tl.tracks}
    for g, pid in pids.items():
        yield json.dumps({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": g}})
        yield json.dumps({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                          "args": {"sort_index": pid}})
    for name in tl.tracks:
        pid, tid = pid_of[name], tid_of[name]
        yield json.dumps({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
        yield json.dumps({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                          "args": {"sort_index": tid}})

    starts, ends = _ps(tl.start_ns), _ps(tl.end_ns)
    names = [json.dumps(lab) for lab in tl.labels]
    tracks = [(pid_of[n], tid_of[n], json.dumps(group_of(n))) for n in tl.tracks]
    keyed = (tl.keys["layer"] >= 0).tolist()
    key_cols = [tl.keys[f].tolist() for f in ("layer", "head", "qtile", "ktile", "kept")]
    nbytes = tl.nbytes.tolist()
    for i, (tr, s, e, lab) in enumerate(zip(tl.track.tolist(), starts, ends, tl.label.tolist(), strict=True)):
        pid, tid, cat = tracks[tr]
        if keyed[i]:
            la, he, qt, kt, kp = (c[i] for c in key_cols)
            args = f'{{"layer":{la},"head":{he},"qtile":{qt},"ktile":{kt},"kept":{kp}}}'
        elif nbytes[i] == nbytes[i]:  # not NaN
            args = f'{{"bytes":{_num(nbytes[i])}}}'
        else:
            args = "{}"
        yield (f'{{"name":{names[lab]},"cat":{cat},"ph":"X","ts":{_us(s)},"dur":{_us(e - s)},'
               f'"pid":{pid},"tid":{tid},"args":{args}}}')
    for k, (a, b) in enumerate(tl.flows.tolist()):
        (pa, ta, _), (pb, tb, _) = tracks[tl.track[a]], tracks[tl.track[b]]
        yield (f'{{"name":"tile","cat":"flow","ph":"s","id":{k + 1},"ts":{_us(starts[a])},'
               f'"pid":{pa},"tid":{ta}}}')
        yield (f'{{"name":"tile","cat":"flow","ph":"f","bp":"e","id":{k + 1},"ts":{_us(starts[b])},'
               f'"pid":{pb},"tid":{tb}}}')
    cpid = pids[COUNTER_PROCESS]
    for c in tl.counters:
        head = f'{{"name":{json.dumps(c.name)},"ph":"C","pid":{cpid},"ts":'
        unit = json.dumps(c.unit or "value")
        for t, v in zip(_ps(c.t_ns), c.value.tolist(), strict=True):
            yield f'{head}{_us(t)},"args":{{{unit}:{_num(v)}}}}}'
