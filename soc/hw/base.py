"""What every hardware block shares: unit-capacity ports, counters, and a registry of block kinds.

A ``Port`` is one SimPy resource of capacity 1 (a CIM array, a MAC array, an SRAM bank port, a DRAM channel, a
link). It accumulates the time it does useful work (``busy_ns``) and emits a span per job when a timeline asks
for its track. A ``Block`` owns ports and counters and turns counts into energy; it never imports another block.
New kinds subclass ``Block`` and register with ``@register("section", "kind")``.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, ClassVar, Iterable, NamedTuple

import simpy
from simpy.core import BoundClass
from simpy.resources import base as simpy_base

from soc.errors import WiringError
from soc.recorder import Recorder

_port_ids = itertools.count()


class MemAccess(NamedTuple):
    """Where a memory access goes: ``pieces`` equal pieces (e.g. kept K rows) totalling ``nbytes``, spread
    over ``span_bytes`` from ``address`` (pieces=1, span_bytes=nbytes: one contiguous block)."""
    address: int
    nbytes: float
    pieces: int = 1
    span_bytes: float = 0.0


def next_order(rank: int) -> int:
    """A fresh place in the global claim order (deadlock avoidance). Lower ranks are claimed first: DRAM (0),
    links (1), SRAM (2), compute (3), so a transfer never sits on a fast resource while queueing for DRAM."""
    return rank * 1_000_000_000 + next(_port_ids)


class Port:
    """A unit-capacity resource with busy-time accounting; ``order`` fixes a global acquisition order."""

    __slots__ = ("name", "resource", "busy_ns", "jobs", "order", "_span")

    def __init__(self, env: simpy.Environment, name: str, recorder: Recorder, rank: int = 3) -> None:
        self.name = name
        self.resource = simpy.Resource(env, capacity=1)
        self.busy_ns = 0.0
        self.jobs = 0
        self.order = next_order(rank)
        self._span = recorder.span_fn(name)

    def charge(self, start_ns: float, duration_ns: float, label: str, args: dict[str, Any] | None) -> None:
        self.busy_ns += duration_ns
        self.jobs += 1
        if self._span is not None:
            self._span(start_ns, start_ns + duration_ns, label, args)


    def acquire(self) -> simpy.Event:
        return self.resource.request()

    def release(self, req: simpy.Event) -> None:
        self.resource.release(req)


class _BankClaim(simpy_base.Put):
    def __init__(self, resource: "BankArray", mask: int) -> None:
        self.mask = mask
        super().__init__(resource)


class _BankFree(simpy_base.Get):
    def __init__(self, resource: "BankArray", claim: _BankClaim) -> None:
        self.claim = claim
        super().__init__(resource)


class BankArray(simpy_base.BaseResource):
    """Independent single-ported banks claimed together: a request names a set of banks (a bit mask) and is
    granted, in one event, as soon as all of them are free. Waiting requests are scanned first-fit, so an
    access to free banks overtakes one blocked on a busy bank, as independent bank ports allow."""

    def __init__(self, env: simpy.Environment, banks: int) -> None:
        super().__init__(env, capacity=banks)
        self.busy_mask = 0

    claim = BoundClass(_BankClaim)
    free = BoundClass(_BankFree)

    def _do_put(self, event: _BankClaim) -> bool:
        if not event.mask & self.busy_mask:
            self.busy_mask |= event.mask
            event.succeed()
        return True  # keep scanning: later requests may want other banks

    def _do_get(self, event: _BankFree) -> bool:
        self.busy_mask &= ~event.claim.mask
        event.succeed()
        return True


class BankSet:
    """One access's claim on some banks of a ``BankArray``: usable in ``hold`` like a port."""

    __slots__ = ("array", "mask", "ports", "order")

    def __init__(self, array: BankArray, mask: int, ports: list[Port], order: int) -> None:
        self.array, self.mask, self.ports, self.order = array, mask, ports, order

    def acquire(self) -> simpy.Event:
        return self.array.claim(self.mask)

    def release(self, req: simpy.Event) -> None:
        self.array.free(req)

    def charge(self, start_ns: float, duration_ns: float, label: str, args: dict[str, Any] | None) -> None:
        for port in self.ports:
            port.charge(start_ns, duration_ns, label, args)


def hold(env: simpy.Environment, jobs: list[tuple[Any, float]], label: str,
         args: dict[str, Any] | None = None):
    """Occupy every port (or bank set) of ``jobs`` from one instant, each for its own duration.

    A transfer starts when all its participants are free (DRAM, links, SRAM banks, an array) and then each is
    busy for the time its own bandwidth needs; the transfer ends with the slowest. Claims are made in the
    global order (DRAM, links, SRAM, compute), so two holds never wait on each other in a cycle.
    """
    if len(jobs) == 1:
        port, duration = jobs[0]
        req = port.acquire()
        if not req.triggered:  # granted at once: no need to wait for the grant event
            yield req
        port.charge(env.now, duration, label, args)
        yield env.timeout(duration)
        port.release(req)
        return
    ordered = sorted(jobs, key=lambda job: job[0].order)
    requests = []
    for port, _ in ordered:
        req = port.acquire()
        requests.append(req)
        if not req.triggered:
            yield req
    start = env.now
    longest = 0.0
    for port, duration in ordered:
        port.charge(start, duration, label, args)
        if duration > longest:
            longest = duration
    last = []
    for (port, duration), req in zip(ordered, requests):
        if duration < longest:
            # a faster participant frees itself by callback: no process resume (~2x cheaper per event)
            env.timeout(duration).callbacks.append(_releaser(port, req))
        else:
            last.append((port, req))
    yield env.timeout(longest)
    for port, req in last:
        port.release(req)


def _releaser(port: Any, req: simpy.Event) -> Callable[[simpy.Event], None]:
    return lambda _event: port.release(req)


class Block:
    """Base of every block: a scoped name, ports, counters, and the energy/area/static-power it reports."""

    section: ClassVar[str]
    kind: ClassVar[str]
    claim_rank: ClassVar[int] = 3

    def __init__(self, env: simpy.Environment, name: str, cfg: Any, recorder: Recorder) -> None:
        self.env = env
        self.name = name
        self.cfg = cfg
        self.recorder = recorder
        self.counts: dict[str, float] = {}
        self.ports: list[Port] = []

    def port(self, suffix: str = "") -> Port:
        p = Port(self.env, f"{self.name}{'.' + suffix if suffix else ''}", self.recorder, self.claim_rank)
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
