"""What a timeline keeps: a time window, a layer/head selection, block-name patterns and an event budget.

The filters act at two moments. Block patterns act when the blocks are built: ``TimelineSink.wants(track)``
answers the recorder's question once per track, so a filtered-out block gets no callback and costs nothing on
the simulator's hot path. The time window drops spans as they arrive. The layer/head selection and the event
budget act when the run is over (see ``soc.timeline.model``): most memory and link spans carry no tile
identity and are kept while a selected tile is in flight, which is known only once the run is over.

The sink stores spans column-wise in typed arrays (about 30 bytes a span instead of a Python tuple's ~200), so
a whole BERT-base run (~0.7 M spans) fits in ~20 MB before any filtering.
"""

from __future__ import annotations

import fnmatch
import math
from array import array
from dataclasses import dataclass
from typing import Any, Iterable

from soc.config.fields import show
from soc.errors import ConfigError

DEFAULT_MAX_EVENTS = 200_000
"""Default event budget of a written timeline (spans + raw counter samples): ~20-30 MB of Chrome JSON."""
DEFAULT_RECORD_LIMIT = 5_000_000
"""Spans held in memory during a run (~150 MB); beyond it the sink stops recording and says so."""

KEY_FIELDS = ("layer", "head", "qtile", "ktile", "kept")
COMPUTE_GROUPS = ("cim", "digital")


def parse_window(text: str | None, what: str = "--timeline-window") -> tuple[float, float] | None:
    """``"START_US:END_US"`` (either end may be left out) -> (start_ns, end_ns)."""
    if text is None or str(text).strip() == "":
        return None
    parts = str(text).split(":")
    if len(parts) != 2:
        raise ConfigError(f"{what}: expected START_US:END_US (microseconds, e.g. 100:250), got {text!r}")
    try:
        lo = float(parts[0]) if parts[0].strip() else 0.0
        hi = float(parts[1]) if parts[1].strip() else math.inf
    except ValueError:
        raise ConfigError(f"{what}: expected numbers in START_US:END_US, got {text!r}") from None
    if not (lo >= 0 and hi > lo) or math.isnan(lo) or math.isnan(hi):
        raise ConfigError(f"{what}: expected 0 <= START_US < END_US, got {text!r}")
    return lo * 1e3, hi * 1e3


MAX_INDEX = 65_535  # layers or heads: no model has more; bounds the set a range like 0-10^14 would build


def parse_index_set(text: str | None, what: str) -> frozenset[int] | None:
    """``"0,2-3"`` -> {0, 2, 3}; None or empty -> None (everything)."""
    if text is None or str(text).strip() == "":
        return None
    out: set[int] = set()
    shown = show(str(text))
    for item in str(text).split(","):
        item = item.strip()
        try:
            if "-" in item[1:]:
                cut = item.index("-", 1)
                a, b = int(item[:cut]), int(item[cut + 1:])
                if a > b:
                    raise ValueError
            else:
                a = b = int(item)
        except ValueError:
            raise ConfigError(f"{what}: expected indices like 0,2-3 (non-negative, ranges low-high), "
                              f"got {shown}") from None
        if a < 0:
            raise ConfigError(f"{what}: expected non-negative indices, got {shown}")
        if b > MAX_INDEX:
            raise ConfigError(f"{what}: expected indices <= {MAX_INDEX}, got {shown}")
        out.update(range(a, b + 1))
    return frozenset(out)


def parse_patterns(text: str | Iterable[str] | None, what: str = "--timeline-blocks") -> tuple[str, ...]:
    """``"cim*,dram*"`` -> ("cim*", "dram*"); None -> ("*",)."""
    if text is None:
        return ("*",)
    items = text.split(",") if isinstance(text, str) else list(text)
    pats = tuple(p.strip() for p in items if p.strip())
    if not pats:
        raise ConfigError(f"{what}: expected comma-separated block-name patterns such as 'cim*,dram*', "
                          f"got {text!r}")
    return pats


def block_of(track: str) -> str:
    """The block of a track: ``sram.bank3`` -> ``sram``, ``interconnect.dram->sram`` -> ``interconnect``."""
    return track.split(".", 1)[0]


@dataclass(frozen=True)
class TimelineFilter:
    """What to keep. ``window_ns`` is (start, end) in simulated ns; ``layers``/``heads`` None = all;
    ``blocks`` are glob patterns matched against a track name or its block name; ``max_events`` None or 0 =
    no budget."""
    window_ns: tuple[float, float] | None = None
    layers: frozenset[int] | None = None
    heads: frozenset[int] | None = None
    blocks: tuple[str, ...] = ("*",)
    max_events: int | None = DEFAULT_MAX_EVENTS
    record_limit: int = DEFAULT_RECORD_LIMIT
    counter_bins: int = 1000

    def __post_init__(self) -> None:
        if self.max_events is not None and self.max_events < 0:
            raise ConfigError(f"--timeline-max-events: expected an integer >= 0 (0: no limit), "
                              f"got {self.max_events}")
        if self.counter_bins < 1:
            raise ConfigError(f"counter_bins: expected an integer >= 1, got {self.counter_bins}")

    def wants_track(self, track: str) -> bool:
        block = block_of(track)
        return any(fnmatch.fnmatchcase(track, p) or fnmatch.fnmatchcase(block, p) for p in self.blocks)

    @property
    def selects_tiles(self) -> bool:
        return self.layers is not None or self.heads is not None

    @property
    def budget(self) -> int | None:
        return self.max_events or None


def filter_from_args(args: Any) -> TimelineFilter:
    """The filter the CLI flags ask for; flags that this build's parser lacks read as unset."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    max_events = get("timeline_max_events")
    return TimelineFilter(
        window_ns=parse_window(get("timeline_window")),
        layers=parse_index_set(get("timeline_layers"), "--timeline-layers"),
        heads=parse_index_set(get("timeline_heads"), "--timeline-heads"),
        blocks=parse_patterns(get("timeline_blocks")),
        max_events=DEFAULT_MAX_EVENTS if max_events is None else int(max_events),
    )


class TimelineSink:
    """A recorder sink that keeps spans and counter samples in compact columns.

    The tile spans of the compute ports (CIM ``score``, digital ``attend``: they carry layer, head, qtile,
    ktile and kept) are always kept, two per tile whatever the window, because the energy counter needs every
    tile's timing; every other span is dropped as it arrives when it falls outside the window.
    """

    def __init__(self, filt: TimelineFilter | None = None) -> None:
        self.filter = filt or TimelineFilter()
        self.asked: list[str] = []               # every track the blocks offered
        self.tracks: list[str] = []              # span tracks, in the order the blocks asked
        self.counter_tracks: list[str] = []
        self._track_id: dict[str, int] = {}
        self._compute: list[bool] = []           # per track: a CIM array or digital MAC array port
        self._counter_id: dict[str, int] = {}
        self.labels: list[str] = []
        self._label_id: dict[str, int] = {}
        # span columns
        self.track = array("H")
        self.start = array("d")
        self.end = array("d")
        self.label = array("H")
        self.nbytes = array("d")                 # NaN: the span carries no byte count
        # tile identity of keyed spans: index into the span columns + the five key fields
        self.keyed_span = array("l")
        self.keys = {f: array("l") for f in KEY_FIELDS}
        # counter samples
        self.c_track = array("H")
        self.c_time = array("d")
        self.c_value = array("d")
        self.dropped_outside_window = 0
        self.dropped_over_limit = 0
        w = self.filter.window_ns
        self._lo, self._hi = (w if w is not None else (-math.inf, math.inf))

    # --- the Sink protocol ---------------------------------------------------------------------------------
    def wants(self, track: str) -> bool:
        # asked once per port or counter when the blocks are built; tracks register on their first event
        self.asked.append(track)
        return self.filter.wants_track(track)

    def unmatched_patterns(self) -> list[str]:
        """Block patterns that matched none of the tracks the blocks offered (a typo, most likely)."""
        return [p for p in self.filter.blocks
                if not any(fnmatch.fnmatchcase(t, p) or fnmatch.fnmatchcase(block_of(t), p) for t in self.asked)]

    def span(self, track: str, start_ns: float, end_ns: float, name: str,
             args: dict[str, Any] | None) -> None:
        tid = self._track_id.get(track)
        if tid is None:
            tid = self._track_id[track] = len(self.tracks)
            self.tracks.append(track)
            self._compute.append(block_of(track).rstrip("0123456789") in COMPUTE_GROUPS)
        keyed = args is not None and "layer" in args
        if not (keyed and self._compute[tid]):  # a compute port's tile spans are kept whatever the window
            if end_ns < self._lo or start_ns > self._hi:
                self.dropped_outside_window += 1
                return
            if len(self.start) >= self.filter.record_limit:
                self.dropped_over_limit += 1
                return
        lid = self._label_id.get(name)
        if lid is None:
            lid = self._label_id[name] = len(self.labels)
            self.labels.append(name)
        if keyed:
            self.keyed_span.append(len(self.start))
            for f in KEY_FIELDS:
                self.keys[f].append(int(args.get(f, -1)))  # type: ignore[union-attr]
        self.track.append(tid)
        self.start.append(start_ns)
        self.end.append(end_ns)
        self.label.append(lid)
        self.nbytes.append(args.get("bytes", math.nan) if args is not None else math.nan)

    def counter(self, track: str, t_ns: float, value: float) -> None:
        cid = self._counter_id.get(track)
        if cid is None:
            cid = self._counter_id[track] = len(self.counter_tracks)
            self.counter_tracks.append(track)
        self.c_track.append(cid)
        self.c_time.append(t_ns)
        self.c_value.append(value)

    # --- reading back --------------------------------------------------------------------------------------
    def counter_samples(self, track: str) -> list[tuple[float, float]]:
        """Every sample the simulator sent for ``track``, in order (what a written counter must reproduce)."""
        cid = self._counter_id.get(track)
        if cid is None:
            return []
        return [(t, v) for c, t, v in zip(self.c_track, self.c_time, self.c_value, strict=True) if c == cid]

    @property
    def span_count(self) -> int:
        return len(self.start)
