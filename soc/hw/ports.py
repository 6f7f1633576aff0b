"""Unit-capacity ports, SRAM bank claims, hold() and stage FIFOs: the timing primitives every block is built of.

A ``Port`` is a unit-capacity resource (a CIM array, a MAC array, an SRAM bank port, a DRAM channel, a
link). It accumulates the time it does useful work (``busy_ns``) and emits a span per job when a timeline asks
for its track. A claim on a free port is granted with no SimPy event and a job's end needs none either; a claim
that finds the port busy waits on one event, fired when the job ends (BERT-base: 9 events per tile where
SimPy Resources took 43). ``hold`` occupies several ports from one instant, each for its own duration.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Any, Callable, NamedTuple

import simpy

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
    """A unit-capacity resource with busy-time accounting; ``order`` fixes a global acquisition order.

    Claims cost no SimPy event when the port is free: the port only remembers until when its job runs
    (``free_at``), so a job's end needs no event either. A claim that finds the port busy waits on one event,
    scheduled for the instant the current job ends, in arrival order (the FIFO of ``simpy.Resource``). On
    BERT-base 12x12 seq 512 this took the event loop from 43 to 9.0 events per tile and
    its cost per tile-stage visit from 3.5x to ~1x a raw SimPy pipeline's (``soc bench``).
    """

    __slots__ = ("name", "env", "busy_ns", "jobs", "order", "_span", "free_at", "waiters")

    def __init__(self, env: simpy.Environment, name: str, recorder: Recorder, rank: int = 3) -> None:
        self.name = name
        self.env = env
        self.busy_ns = 0.0
        self.jobs = 0
        self.order = next_order(rank)
        self._span = recorder.span_fn(name)
        self.free_at = 0.0  # end of the current job; CLAIMED while its holder still gathers its other ports
        self.waiters: deque[simpy.Event] = deque()

    def charge(self, start_ns: float, duration_ns: float, label: str, args: dict[str, Any] | None) -> None:
        self.busy_ns += duration_ns
        self.jobs += 1
        if self._span is not None:
            self._span(start_ns, start_ns + duration_ns, label, args)

    def acquire(self) -> simpy.Event | None:
        """Claim the port: None if granted now, else an event that fires when it is handed over."""
        if self.free_at <= self.env.now:  # (waiters only exist while the port is claimed)
            self.free_at = CLAIMED
            return None
        wait = simpy.Event(self.env)
        self.waiters.append(wait)
        if self.free_at != CLAIMED and len(self.waiters) == 1:
            self._hand_over()
        return wait

    def occupy(self, start_ns: float, duration_ns: float, label: str, args: dict[str, Any] | None) -> None:
        """The claimed port works from ``start_ns`` (now) for ``duration_ns``, then frees itself."""
        self.charge(start_ns, duration_ns, label, args)
        self.free_at = start_ns + duration_ns
        if self.waiters:
            self._hand_over()

    def release(self, req: Any = None) -> None:
        """Free the port now (a claim given up without a job)."""
        self.free_at = self.env.now
        if self.waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        # the first waiter owns the port from the end of the current job on: one event, at that instant
        _fire_at(self.env, self.waiters.popleft(), self.free_at)
        self.free_at = CLAIMED


CLAIMED = math.inf


def _fire_at(env: simpy.Environment, event: simpy.Event, at_ns: float, value: Any = None) -> None:
    """Schedule ``event`` to succeed at exactly ``at_ns`` (``now + (at - now)`` can miss it by an ulp, and
    timing must not depend on who computed an instant)."""
    now = env.now
    delay = at_ns - now
    while now + delay < at_ns:
        delay = math.nextafter(delay, math.inf)
    while delay > 0 and now + delay > at_ns:
        delay = math.nextafter(delay, -math.inf)
    event._ok = True  # what Event.succeed does, with a delay
    event._value = value
    env.schedule(event, delay=delay)


class BankArray:
    """Independent single-ported banks claimed together: a claim names a set of banks and is granted as soon
    as all of them are free. Waiting claims are scanned first-fit, so an access to free banks overtakes one
    blocked on a busy bank, as independent bank ports allow. Like ``Port``, a free claim and a job's end cost
    no event; while claims wait, one wake-up per instant some bank frees scans them."""

    def __init__(self, env: simpy.Environment, banks: int) -> None:
        self.env = env
        self.free_at = [0.0] * banks
        self.waiters: list[tuple[BankSet, simpy.Event]] = []
        self._wake_at = math.inf

    def _ready(self, banks: tuple[int, ...], now: float) -> bool:
        free_at = self.free_at
        for b in banks:
            if free_at[b] > now:
                return False
        return True

    def claim(self, bank_set: "BankSet") -> simpy.Event | None:
        now = self.env.now
        if self.waiters:
            self._grant_ready(now)  # claims that waited get first pick of banks freed by now
        banks, free_at = bank_set.banks, self.free_at
        for b in banks:
            if free_at[b] > now:
                break
        else:
            for b in banks:
                free_at[b] = CLAIMED
            return None
        wait = simpy.Event(self.env)
        self.waiters.append((bank_set, wait))
        self._wake()
        return wait

    def occupy(self, banks: tuple[int, ...], end_ns: float) -> None:
        for b in banks:
            self.free_at[b] = end_ns
        if self.waiters:
            self._wake()

    def _grant_ready(self, now: float) -> None:
        kept = []
        for bank_set, wait in self.waiters:
            if self._ready(bank_set.banks, now):
                for b in bank_set.banks:
                    self.free_at[b] = CLAIMED
                wait.succeed()
            else:
                kept.append((bank_set, wait))
        self.waiters = kept

    def _wake(self) -> None:
        """Schedule a scan for the earliest instant a waiting claim may find all its banks free."""
        soonest = min(max(self.free_at[b] for b in bank_set.banks) for bank_set, _ in self.waiters)
        if soonest < self._wake_at:
            self._wake_at = soonest
            tick = simpy.Event(self.env)
            tick.callbacks.append(self._on_wake)
            _fire_at(self.env, tick, soonest)

    def _on_wake(self, tick: simpy.Event) -> None:
        if self.env.now != self._wake_at:
            return  # superseded by an earlier wake-up, which rescheduled
        self._wake_at = math.inf
        self._grant_ready(self.env.now)
        if self.waiters:
            self._wake()


class BankSet:
    """One access's claim on some banks of a ``BankArray``: usable in ``hold`` like a port."""

    __slots__ = ("array", "banks", "mask", "ports", "order")

    def __init__(self, array: BankArray, banks: tuple[int, ...], ports: list[Port], order: int) -> None:
        self.array, self.banks, self.ports, self.order = array, banks, ports, order
        self.mask = sum(1 << b for b in set(banks))

    def acquire(self) -> simpy.Event | None:
        return self.array.claim(self)

    def occupy(self, start_ns: float, duration_ns: float, label: str, args: dict[str, Any] | None) -> None:
        for port in self.ports:  # Port.charge inlined: 8 banks per access, ~0.1 us a call saved
            port.busy_ns += duration_ns
            port.jobs += 1
            if port._span is not None:
                port._span(start_ns, start_ns + duration_ns, label, args)
        self.array.occupy(self.banks, start_ns + duration_ns)


def _claim_order(job: tuple[Any, float]) -> int:
    return job[0].order


def hold(env: simpy.Environment, jobs: list[tuple[Any, float]], label: str,
         args: dict[str, Any] | None = None):
    """Occupy every port (or bank set) of ``jobs`` from one instant, each for its own duration.

    A transfer starts when all its participants are free (DRAM, links, SRAM banks, an array) and then each is
    busy for the time its own bandwidth needs; the transfer ends with the slowest. Claims are made in the
    global order (DRAM, links, SRAM, compute), so two holds never wait on each other in a cycle. Uncontended,
    a hold costs one SimPy event (the timeout of its slowest job).

    A participant may also follow the plain SimPy contract instead of ``occupy``: ``acquire()`` returns an
    event (already triggered when granted at once) and ``release(req)`` frees it; it is released by callback
    at the end of its own job.
    """
    if len(jobs) > 1:
        jobs = sorted(jobs, key=_claim_order)
    longest = 0.0
    plain = None
    for job in jobs:
        port = job[0]
        if job[1] > longest:
            longest = job[1]
        if hasattr(port, "occupy"):
            wait = port.acquire()
            if wait is not None:
                yield wait
        else:
            req = port.acquire()
            if not req.triggered:
                yield req
            if plain is None:
                plain = {}
            plain[port] = req
    start = env.now
    # the hold's own end is scheduled before any hand-over of its ports: at an instant where it frees a port,
    # this process goes on before the waiter it hands the port to, as with SimPy's Release and Request events
    # (waiter first moved the bundled traces' latency 1.2-3.2% from simpy.Resource's; this order 0.06-0.8%)
    done = env.timeout(longest)
    for port, duration in jobs:
        if plain is not None and port in plain:
            port.charge(start, duration, label, args)
        else:
            port.occupy(start, duration, label, args)
    if plain is None:
        yield done
        return
    last = []
    for port, duration in jobs:
        req = plain.get(port)
        if req is None:
            continue
        if duration < longest:
            env.timeout(duration).callbacks.append(_releaser(port, req))
        else:
            last.append((port, req))
    yield done
    for port, req in last:
        port.release(req)


def _releaser(port: Any, req: simpy.Event) -> Callable[[simpy.Event], None]:
    return lambda _event: port.release(req)


class Fifo:
    """A bounded FIFO between two stages (``simpy.Store`` semantics) that costs an event only when a side
    waits: ``put`` into room or ``get`` of a waiting item return at once; a waiting getter receives the item,
    and a waiting putter its slot, through one event."""

    __slots__ = ("env", "capacity", "items", "getters", "putters")

    def __init__(self, env: simpy.Environment, capacity: int) -> None:
        self.env = env
        self.capacity = capacity
        self.items: deque[Any] = deque()
        self.getters: deque[simpy.Event] = deque()
        self.putters: deque[tuple[Any, simpy.Event]] = deque()

    def put(self, item: Any):
        if self.getters:
            self.getters.popleft().succeed(item)
            return
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        wait = simpy.Event(self.env)
        self.putters.append((item, wait))
        yield wait

    def get(self):
        items = self.items
        if items:
            item = items.popleft()
            if self.putters:
                queued, wait = self.putters.popleft()
                items.append(queued)
                wait.succeed()
            return item
        wait = simpy.Event(self.env)
        self.getters.append(wait)
        item = yield wait
        return item

    def __len__(self) -> int:
        return len(self.items)
