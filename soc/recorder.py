"""Observability: spans and counters sent to a sink only when one is attached.

Blocks ask the recorder once, at elaboration, for a callable per track; with no sink (or a sink that filters
the track out) they get ``None`` and the hot path pays a single ``if``. Statistics never depend on it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

SpanFn = Callable[[float, float, str, dict[str, Any] | None], None]
CounterFn = Callable[[float, float], None]


class Sink(Protocol):
    def wants(self, track: str) -> bool: ...
    def span(self, track: str, start_ns: float, end_ns: float, name: str, args: dict[str, Any] | None) -> None: ...
    def counter(self, track: str, t_ns: float, value: float) -> None: ...


@dataclass
class MemorySink:
    """Keeps every span and counter sample in lists (tests, timelines, plots)."""
    patterns: tuple[str, ...] = ("*",)
    spans: list[tuple[str, float, float, str, dict[str, Any] | None]] = field(default_factory=list)
    counters: list[tuple[str, float, float]] = field(default_factory=list)

    def wants(self, track: str) -> bool:
        return any(fnmatch.fnmatchcase(track, p) for p in self.patterns)

    def span(self, track: str, start_ns: float, end_ns: float, name: str, args: dict[str, Any] | None) -> None:
        self.spans.append((track, start_ns, end_ns, name, args))

    def counter(self, track: str, t_ns: float, value: float) -> None:
        self.counters.append((track, t_ns, value))


class Recorder:
    """Hands out per-track callables; ``Recorder(None)`` hands out ``None`` everywhere."""

    def __init__(self, sink: Sink | None = None) -> None:
        self.sink = sink

    def span_fn(self, track: str) -> SpanFn | None:
        sink = self.sink
        if sink is None or not sink.wants(track):
            return None
        return lambda start, end, name, args: sink.span(track, start, end, name, args)

    def counter_fn(self, track: str) -> CounterFn | None:
        sink = self.sink
        if sink is None or not sink.wants(track):
            return None
        return lambda t, value: sink.counter(track, t, value)


OFF = Recorder(None)
