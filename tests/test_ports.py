"""Ports, bank sets and FIFOs that cost SimPy events only when contended follow SimPy's own rules.

The oracle is SimPy itself: the same random workload (processes holding random sets of ports and SRAM bank
sets for random durations, passing items through bounded FIFOs) runs once on ``soc.hw.base`` and once on a
reference built from ``simpy.Resource``, ``simpy.Store`` and a first-fit bank resource (the code these classes
replaced). Every process thinks for a random time before each claim, so no two processes ask for a port at
the same instant and SimPy's order of same-instant events cannot matter: every hold must start and end at
exactly the same time in both.

What the new classes change is only that order at a tie: a port handed over at instant T wakes its waiter
through one event scheduled when the hand-over became known, where SimPy's resource woke it through a Release
and then a Request event, after whatever else the releasing process did at T. The last test pins the new
rule (the process that waited gets the port before one that just freed it and asks again).
"""

from __future__ import annotations

import random

import pytest
import simpy
from simpy.core import BoundClass
from simpy.resources import base as simpy_base

from soc.hw.base import BankArray, BankSet, Fifo, Port, hold
from soc.recorder import OFF


# --------------------------------------------------------------------------- the reference: plain SimPy
class RefPort:
    def __init__(self, env, order):
        self.resource, self.order = simpy.Resource(env, capacity=1), order

    def acquire(self):
        return self.resource.request()

    def release(self, req):
        self.resource.release(req)

    def charge(self, *args):
        pass


class _Claim(simpy_base.Put):
    def __init__(self, resource, mask):
        self.mask = mask
        super().__init__(resource)


class _Free(simpy_base.Get):
    def __init__(self, resource, claim):
        self.claim = claim
        super().__init__(resource)


class RefBanks(simpy_base.BaseResource):
    def __init__(self, env, banks):
        super().__init__(env, capacity=banks)
        self.busy = 0

    claim = BoundClass(_Claim)
    free = BoundClass(_Free)

    def _do_put(self, event):
        if not event.mask & self.busy:
            self.busy |= event.mask
            event.succeed()
        return True

    def _do_get(self, event):
        self.busy &= ~event.claim.mask
        event.succeed()
        return True


class RefBankSet:
    def __init__(self, array, mask, order):
        self.array, self.mask, self.order = array, mask, order

    def acquire(self):
        return self.array.claim(self.mask)

    def release(self, req):
        self.array.free(req)

    def charge(self, *args):
        pass


class RefFifo:
    def __init__(self, env, capacity):
        self.store = simpy.Store(env, capacity=capacity)

    def put(self, item):
        yield self.store.put(item)

    def get(self):
        item = yield self.store.get()
        return item


def _ref_world(env, n_ports, n_banks):
    ports = [RefPort(env, i) for i in range(n_ports)]
    banks = RefBanks(env, n_banks)
    return ports, lambda bank_tuple: RefBankSet(banks, sum(1 << b for b in bank_tuple), n_ports), RefFifo


def _new_world(env, n_ports, n_banks):
    ports = [Port(env, f"p{i}", OFF) for i in range(n_ports)]
    for i, p in enumerate(ports):
        p.order = i
    banks = BankArray(env, n_banks)
    bank_ports = [Port(env, f"b{i}", OFF) for i in range(n_banks)]
    return ports, lambda t: BankSet(banks, t, [bank_ports[b] for b in t], n_ports), Fifo


def _run(world, seed, n_procs=6, n_ports=4, n_banks=4, steps=60, bank_p=0.6):
    """Producers hold random ports/bank sets and pass tokens through FIFOs to consumers that hold more."""
    env = simpy.Environment()
    ports, bank_set, fifo_kind = world(env, n_ports, n_banks)
    fifos = [fifo_kind(env, 2) for _ in range(n_procs // 2)]
    log = []

    def plan(rng):
        jobs = [(ports[i], rng.uniform(0.1, 3.0)) for i in rng.sample(range(n_ports), rng.randint(1, n_ports))]
        if rng.random() < bank_p:
            first, width = rng.randrange(n_banks), rng.randint(1, n_banks)
            jobs.append((bank_set(tuple((first + k) % n_banks for k in range(width))), rng.uniform(0.1, 2.0)))
        return jobs

    def producer(name, rng, out):
        for step in range(steps):
            yield env.timeout(rng.expovariate(1.0))
            t0 = env.now
            yield from hold(env, plan(rng), name)
            log.append((name, step, t0, env.now))
            yield from out.put((name, step))
            log.append((name, "put", env.now))

    def consumer(name, rng, inp):
        for _ in range(steps):
            item = yield from inp.get()
            log.append((name, "got", item, env.now))
            yield env.timeout(rng.expovariate(2.0))
            yield from hold(env, plan(rng), name)
            log.append((name, "done", env.now))

    for k, f in enumerate(fifos):
        env.process(producer(f"prod{k}", random.Random(seed * 100 + k), f))
        env.process(consumer(f"cons{k}", random.Random(seed * 100 + 50 + k), f))
    env.run()
    return log, env.now, int(next(env._eid))


@pytest.mark.parametrize("seed", range(8))
def test_same_schedule_as_simpy_resources_and_stores(seed):
    ref_log, ref_end, ref_events = _run(_ref_world, seed)
    new_log, new_end, new_events = _run(_new_world, seed)
    assert len(ref_log) == len(new_log) > 0
    assert sorted(new_log, key=repr) == sorted(ref_log, key=repr)  # same holds, same instants, exactly
    assert new_end == ref_end
    assert new_events < ref_events / 2  # and far fewer events


def test_a_free_port_costs_no_event_and_a_contended_one_one():
    env = simpy.Environment()
    port = Port(env, "p", OFF)
    log = []

    def user(tag, delay, duration):
        yield env.timeout(delay)
        yield from hold(env, [(port, duration)], tag)
        log.append((tag, env.now))

    env.process(user("a", 0.0, 5.0))   # free: granted at once
    env.process(user("b", 1.0, 2.0))   # busy until 5: waits, runs 5..7
    env.process(user("c", 2.0, 1.0))   # queued behind b: runs 7..8
    env.process(user("d", 9.0, 1.0))   # free again: runs 9..10
    env.run()
    assert log == [("a", 5.0), ("b", 7.0), ("c", 8.0), ("d", 10.0)]
    # 4 processes x (Initialize + start timeout + hold timeout + end) + 2 hand-overs (b, c)
    assert int(next(env._eid)) == 4 * 4 + 2
    assert port.busy_ns == 9.0 and port.jobs == 4


def test_fifo_hands_items_over_in_order_with_back_pressure():
    env = simpy.Environment()
    fifo = Fifo(env, 2)
    got, put_at = [], []

    def producer():
        for i in range(5):
            yield from fifo.put(i)
            put_at.append((i, env.now))

    def consumer():
        yield env.timeout(10)
        for _ in range(5):
            got.append(((yield from fifo.get()), env.now))
            yield env.timeout(1)

    env.process(producer())
    env.process(consumer())
    env.run()
    assert got == [(0, 10), (1, 11), (2, 12), (3, 13), (4, 14)]
    assert put_at == [(0, 0), (1, 0), (2, 10), (3, 11), (4, 12)]  # the third put waits for room


def test_at_a_hand_over_the_waiter_goes_before_the_releaser_asking_again():
    """a holds the port 0..4; b asks at 1 and waits; at 4 a frees it and asks at once for the same port."""
    env = simpy.Environment()
    port = Port(env, "p", OFF)
    log = []

    def a():
        yield from hold(env, [(port, 4.0)], "a1")
        yield from hold(env, [(port, 1.0)], "a2")
        log.append(("a", env.now))

    def b():
        yield env.timeout(1.0)
        yield from hold(env, [(port, 2.0)], "b")
        log.append(("b", env.now))

    env.process(a())
    env.process(b())
    env.run()
    assert log == [("b", 6.0), ("a", 7.0)]
