"""What every hardware block shares: unit-capacity ports, counters, and a registry of block kinds.

A ``Port`` is one SimPy resource of capacity 1 (a CIM array, a MAC array, an SRAM bank port, a DRAM channel, a
link). It accumulates the time it does useful work (``busy_ns``) and emits a span per job when a timeline asks
for its track. A ``Block`` owns ports and counters and turns counts into energy; it never imports another block.
New kinds subclass ``Block`` and register with ``@register("section", "kind")``.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, ClassVar, Iterable

import simpy

from soc.errors import WiringError
from soc.recorder import Recorder

_port_ids = itertools.count()


class Port:
    """A unit-capacity resource with busy-time accounting; ``order`` fixes a global acquisition order."""

    __slots__ = ("name", "resource", "busy_ns", "jobs", "order", "_span")

    def __init__(self, env: simpy.Environment, name: str, recorder: Recorder) -> None:
        self.name = name
        self.resource = simpy.Resource(env, capacity=1)
        self.busy_ns = 0.0
        self.jobs = 0
        self.order = next(_port_ids)
        self._span = recorder.span_fn(name)

    def charge(self, start_ns: float, duration_ns: float, label: str, args: dict[str, Any] | None) -> None:
        self.busy_ns += duration_ns
        self.jobs += 1
        if self._span is not None:
            self._span(start_ns, start_ns + duration_ns, label, args)


def hold(env: simpy.Environment, jobs: list[tuple[Port, float]], label: str,
         args: dict[str, Any] | None = None):
    """Occupy every port of ``jobs`` at once (cut-through) for the longest of their durations.

    Ports are requested in their global order, so two holds can never wait on each other in a cycle.
    Each port is charged its own duration as busy time.
    """
    if len(jobs) == 1:
        port, duration = jobs[0]
        with port.resource.request() as req:
            yield req
            start = env.now
            port.charge(start, duration, label, args)
            yield env.timeout(duration)
        return
    ordered = sorted(jobs, key=lambda job: job[0].order)
    requests = [port.resource.request() for port, _ in ordered]
    try:
        for req in requests:
            yield req
        start = env.now
        longest = 0.0
        for port, duration in ordered:
            port.charge(start, duration, label, args)
            longest = max(longest, duration)
        yield env.timeout(longest)
    finally:
        for (port, _), req in zip(ordered, requests):
            port.resource.release(req)


class Block:
    """Base of every block: a scoped name, ports, counters, and the energy/area/static-power it reports."""

    section: ClassVar[str]
    kind: ClassVar[str]

    def __init__(self, env: simpy.Environment, name: str, cfg: Any, recorder: Recorder) -> None:
        self.env = env
        self.name = name
        self.cfg = cfg
        self.recorder = recorder
        self.counts: dict[str, float] = {}
        self.ports: list[Port] = []

    def port(self, suffix: str = "") -> Port:
        p = Port(self.env, f"{self.name}{'.' + suffix if suffix else ''}", self.recorder)
        self.ports.append(p)
        return p

    def count(self, key: str, amount: float) -> None:
        self.counts[key] = self.counts.get(key, 0.0) + amount

    # --- what the report reads -------------------------------------------------------------------------
    def busy_ns(self) -> float:
        """Busy time of the block: its ports' work divided over the ports (so utilization stays in [0, 1])."""
        if not self.ports:
            return 0.0
        return sum(p.busy_ns for p in self.ports) / len(self.ports)

    def dynamic_energy_pj(self) -> dict[str, float]:
        """Energy by event class, from the counters and the config's per-event costs."""
        return {}

    @property
    def static_mw(self) -> float:
        return float(getattr(self.cfg, "static_mw", 0.0))

    @property
    def area_mm2(self) -> float:
        return float(getattr(self.cfg, "area_mm2", 0.0))


_REGISTRY: dict[tuple[str, str], type[Block]] = {}


def register(section: str, kind: str) -> Callable[[type[Block]], type[Block]]:
    def deco(cls: type[Block]) -> type[Block]:
        cls.section, cls.kind = section, kind
        _REGISTRY[(section, kind)] = cls
        return cls
    return deco


def block_class(section: str, kind: str) -> type[Block]:
    try:
        return _REGISTRY[(section, kind)]
    except KeyError:
        known = sorted(k for s, k in _REGISTRY if s == section)
        raise WiringError(f"{section}.kind: no block kind {kind!r} (registered: {', '.join(known)})") from None


def registered(section: str | None = None) -> Iterable[tuple[str, str]]:
    return sorted(k for k in _REGISTRY if section is None or k[0] == section)
