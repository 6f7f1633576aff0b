"""Timelines of a run, viewable in Perfetto (ui.perfetto.dev) or chrome://tracing, and plots drawn from them.

    soc run --timeline out/run.pftrace          # native Perfetto protobuf
    soc run --timeline out/run.json --timeline-window 100:250 --timeline-blocks 'cim*,digital*,dram*'
    soc run --plots out/plots                   # Gantt, utilization, token-buffer occupancy, kept fraction

As a library::

    sink = TimelineSink(TimelineFilter(window_ns=(0, 50_000)))
    result = soc.simulate(cfg, trace, recorder=Recorder(sink))
    write_timeline("run.json", build_timeline(sink, result))

One track per hardware port (each CIM array, digital MAC array, SRAM bank, DRAM channel, interconnect link
direction), counters for token-buffer occupancy, DRAM bandwidth and cumulative energy, flows from each tile's
CIM scoring to the digital work on it. With no timeline asked for, no sink exists and the blocks hold no
callbacks (see benchmarks/bench_recorder.py for the measured cost).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from soc.errors import ConfigError
from soc.recorder import Recorder
from soc.timeline.filters import (DEFAULT_MAX_EVENTS, TimelineFilter, TimelineSink, block_of, filter_from_args,
                                  parse_index_set, parse_patterns, parse_window)
from soc.timeline.model import Counter, Timeline, build_timeline

FORMATS = {".json": "chrome", ".pftrace": "perfetto", ".perfetto-trace": "perfetto", ".pb": "perfetto"}

__all__ = ["attach", "write_timeline", "timeline_format", "build_timeline", "Timeline", "Counter",
           "TimelineSink", "TimelineFilter", "filter_from_args", "parse_window", "parse_index_set",
           "parse_patterns", "DEFAULT_MAX_EVENTS", "FORMATS"]


def timeline_format(path: str | os.PathLike[str]) -> str:
    """'chrome' or 'perfetto', chosen by the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--timeline {path}: expected a .json (Chrome trace) or .pftrace (Perfetto "
                          f"protobuf) file name, got extension {suffix or '(none)'!r}")
    return FORMATS[suffix]


def write_timeline(path: str | os.PathLike[str], tl: Timeline) -> int:
    """Write ``tl`` in the format the extension names; returns the number of trace events written."""
    if timeline_format(path) == "perfetto":
        from soc.timeline.perfetto import write_perfetto
        return write_perfetto(path, tl)
    from soc.timeline.chrome import write_chrome
    return write_chrome(path, tl)


def _check_ready(args: argparse.Namespace) -> None:
    """Fail on a bad flag before the run, not after it."""
    if getattr(args, "timeline", None) and timeline_format(args.timeline) == "perfetto":
        from soc.timeline.perfetto import _pb
        _pb()
    if getattr(args, "plots", None):
        from soc.faces.plots import require_matplotlib
        require_matplotlib()


def attach(args: argparse.Namespace) -> tuple[Recorder, Callable]:
    """The recorder to simulate with, and ``finish(result)`` that writes the timeline and plots after the run.

    Reads ``args.timeline``, ``args.plots`` and the optional filter flags ``timeline_window``,
    ``timeline_layers``, ``timeline_heads``, ``timeline_blocks``, ``timeline_max_events``.
    """
    filt = filter_from_args(args)
    _check_ready(args)
    sink = TimelineSink(filt)

    def finish(result) -> None:
        import sys

        unmatched = sink.unmatched_patterns()
        if unmatched:
            blocks = sorted({block_of(t) for t in sink.asked})
            print(f"soc: warning: --timeline-blocks {', '.join(unmatched)}: matches no block "
                  f"(blocks: {', '.join(blocks)})", file=sys.stderr)
        tl = build_timeline(sink, result, filt)
        if getattr(args, "timeline", None):
            path = Path(args.timeline)
            events = write_timeline(path, tl)
            size = path.stat().st_size
            print(f"  timeline       {path} ({events:,} events, {size / 1e6:.1f} MB, "
                  f"{tl.range_ns[0] / 1e3:,.1f}-{tl.range_ns[1] / 1e3:,.1f} us)")
        if getattr(args, "plots", None):
            from soc.faces.plots import write_plots
            # plots have no file size to bound: draw them from the whole recorded run
            whole = tl if not tl.truncated else build_timeline(sink, result, replace(filt, max_events=None))
            written = write_plots(args.plots, result, whole)
            print(f"  plots          {', '.join(str(p) for p in written)}")
        for note in tl.notes:
            print(f"  note           {note}")

    return Recorder(sink), finish
