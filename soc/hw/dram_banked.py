"""Bank-level off-chip DRAM (``dram.kind: banked``): channels, ranks, bank groups, banks, row buffers, JEDEC timing.

Hardware modelled. Each channel has its own data bus and controller (soc/hw/dram_controller.py); ranks share
the channel's bus. A bank holds at most one open row. A burst (``burst_length`` transfers of ``bus_bytes``) to
the open row is a *hit* (column command only), to a precharged bank a *miss* (activate, then tRCD), to a bank
with another row open a *conflict* (precharge, tRP, activate, tRCD). Closed-form checks: on an idle channel a
hit takes CL + burst, a miss tRCD + CL + burst, a conflict tRP + tRCD + CL + burst.

How it meets SimPy. ``access()`` turns a request into bursts (addresses decoded by ``address_mapping``), hands
each channel its part, and returns one job: a claim whose grant fires when the data of the request's slowest
channel starts flowing (``end - duration``, ``duration`` = the request's bursts on its busiest channel at the
burst rate), so ``hold`` ends it with the last data. Each channel serves its part on its own timeline, so a
request over several channels never holds them from one common start. Reads complete with their data; writes
are posted (complete as they enter the write buffer, unless it is full). Each request costs one SimPy event
(the grant) plus one per controller decision; the schedule itself is analytic.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import simpy

from soc.hw.base import MemAccess, Memory, register
from soc.hw.dram_controller import Channel, Part
from soc.hw.dram_presets import FIELDS, DramSpec, address_fields, resolve_spec

__all__ = ["BankedDram", "DramSpec", "resolve_spec"]


class _Claim:
    """A request's claim on the DRAM, usable in ``hold``: granted when its last channel's data starts."""

    __slots__ = ("env", "event", "duration", "parts", "left", "order", "counts")

    def __init__(self, env: simpy.Environment, duration: float, order: int, counts: dict[str, float]) -> None:
        self.env, self.duration, self.order, self.counts = env, duration, order, counts
        self.event = env.event()
        self.parts: list[tuple[Channel, Part]] = []
        self.left = 0

    def part_done(self, _part: Part) -> None:
        self.left -= 1
        if self.left:
            return
        end = max(p.end_ns for _, p in self.parts)
        wait = end - self.duration - self.env.now
        if wait > 1e-12:
            self.counts["grant_events"] += 1
            self.env.timeout(wait).callbacks.append(lambda _e: self.event.succeed())
        else:
            self.event.succeed()

    def acquire(self) -> simpy.Event:
        return self.event

    def release(self, req: simpy.Event) -> None:
        pass

    def charge(self, start_ns: float, duration_ns: float, label: str, args: dict[str, Any] | None) -> None:
        for ch, p in self.parts:  # each channel is busy for its own bursts, from its own first data
            ch.port.charge(p.first_ns, p.busy_ns, label, args)


@register("dram", "banked")
class BankedDram(Memory):
    claim_rank = 0

    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self.spec = spec = resolve_spec(cfg)
        self.fields = address_fields(spec)
        self._slices: dict[str, tuple[int, int]] = {}  # field -> (shift, mask) in the burst index
        shift = 0
        for fname, bits in self.fields:
            if bits:
                self._slices[fname] = (shift, (1 << bits) - 1)
            shift += bits
        self.chans = [Channel(env, self.port(f"ch{i}"), spec, cfg, self.counts) for i in range(spec.channels)]
        self._order = self.ports[0].order  # DRAM claims come first in hold's global order
        self._cursor = 0  # where=None: accesses stream through the address space
        self._capacity = spec.channels * spec.ranks * spec.banks_per_channel * spec.rows_per_bank * spec.row_bytes
        for key in ("read_bytes", "write_bytes", "read_bursts", "write_bursts", "activations", "row_hits",
                    "row_misses", "row_conflicts", "refreshes", "requests", "grant_events", "decision_events",
                    "decisions", "write_drains", "scheduled_by_command"):
            self.counts[key] = 0.0

    # --- addresses ------------------------------------------------------------------------------------------
    def bursts(self, where: tuple[MemAccess, ...]) -> np.ndarray:
        """Burst indices (address // burst_bytes) a request touches, in address order within each access."""
        bb = self.spec.burst_bytes
        parts = []
        for acc in where:
            pieces, span = max(1, int(acc.pieces)), float(acc.span_bytes)
            if pieces == 1 or span <= acc.nbytes:
                first, last = acc.address // bb, (acc.address + max(1, math.ceil(acc.nbytes)) - 1) // bb
                parts.append(np.arange(first, last + 1, dtype=np.int64))
                continue
            piece = max(1, math.ceil(acc.nbytes / pieces))
            if piece * pieces == acc.nbytes and int(span) % piece == 0:
                # whole rows (e.g. kept K rows): evenly spread over the span's row slots, row-aligned
                slots = int(span) // piece
                starts = acc.address + (np.arange(pieces, dtype=np.int64) * slots // pieces) * piece
            else:
                starts = acc.address + (np.arange(pieces, dtype=np.int64) * int(span)) // pieces
            lo, hi = starts // bb, (starts + piece - 1) // bb
            counts = hi - lo + 1
            idx = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
            keep = np.ones(len(idx), dtype=bool)
            keep[1:] = idx[1:] != idx[:-1]  # neighbouring pieces may share a burst
            parts.append(idx[keep])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def decode(self, burst_idx: np.ndarray) -> dict[str, np.ndarray]:
        """Field values of each burst (``bank`` is the flat bank index over ranks, groups and banks)."""
        out = {name: (burst_idx >> shift) & mask for name, (shift, mask) in self._slices.items()}
        for name in FIELDS:
            out.setdefault(name, np.zeros_like(burst_idx))
        s = self.spec
        out["bank"] = (out["rank"] * s.banks_per_channel + out["bankgroup"] * (s.banks_per_channel // s.bank_groups)
                       + out["bank"])
        return out

    # --- the SimPy face -------------------------------------------------------------------------------------
    def access(self, nbytes: float, write: bool, where: tuple[MemAccess, ...] | None = None
               ) -> list[tuple[_Claim, float]]:
        if nbytes <= 0:
            return []
        if where is None:
            where = (MemAccess(self._cursor, nbytes),)
            self._cursor = (self._cursor + math.ceil(nbytes)) % self._capacity
        self.count("write_bytes" if write else "read_bytes", nbytes)
        idx = self.bursts(where) % (self._capacity // self.spec.burst_bytes)  # addresses wrap at capacity
        self.count("write_bursts" if write else "read_bursts", len(idx))
        sl, sp = self._slices, self.spec
        zero = np.zeros_like(idx)
        row = (idx >> sl["row"][0]) & sl["row"][1] if "row" in sl else zero
        bank = (idx >> sl["bank"][0]) & sl["bank"][1] if "bank" in sl else zero
        bg = (idx >> sl["bankgroup"][0]) & sl["bankgroup"][1] if "bankgroup" in sl else zero
        rank = (idx >> sl["rank"][0]) & sl["rank"][1] if "rank" in sl else zero
        if "bankgroup" in sl or "rank" in sl:  # flat bank over ranks, groups and banks (as decode())
            bank = rank * sp.banks_per_channel + bg * (sp.banks_per_channel // sp.bank_groups) + bank
        if len(self.chans) == 1:
            groups = [(0, bank, bg, rank, row)]
        else:
            chan = (idx >> sl["channel"][0]) & sl["channel"][1]
            order = np.argsort(chan, kind="stable")  # keeps each channel's bursts in arrival order
            cuts = np.cumsum(np.bincount(chan, minlength=len(self.chans)))
            groups = [(c, bank[sel], bg[sel], rank[sel], row[sel])
                      for c, sel in enumerate(np.split(order, cuts[:-1])) if len(sel)]
        busiest = max(len(g[1]) for g in groups)
        self.counts["requests"] += 1
        claim = _Claim(self.env, busiest * self.spec.t_burst_ns, self._order, self.counts)
        claim.left = len(groups)
        tb = self.spec.t_burst_ns
        for c, b, g, r, w in groups:
            part = Part(b, g, r, w, write, claim.part_done)
            part.busy_ns = len(b) * tb
            claim.parts.append((self.chans[c], part))
        for ch, part in list(claim.parts):
            ch.submit(part)
        return [(claim, claim.duration)]

    # --- what the report reads ------------------------------------------------------------------------------
    def dynamic_energy_pj(self) -> dict[str, float]:
        c, s = self.counts, self.spec
        bursts = c["read_bursts"] + c["write_bursts"]
        return {"activate": c["activations"] * s.activate_pj, "read": c["read_bursts"] * s.read_burst_pj,
                "write": c["write_bursts"] * s.write_burst_pj, "refresh": c["refreshes"] * s.refresh_pj,
                "io": bursts * s.burst_bytes * s.io_pj_per_byte}

    def controller_cost(self) -> dict[str, Any]:
        """Events and analytic work the controller spent, in total and per request."""
        c = self.counts
        n = max(1.0, c["requests"])
        bursts = c["read_bursts"] + c["write_bursts"]
        return {"requests": c["requests"], "grant_events": c["grant_events"],
                "decision_events": c["decision_events"], "decisions": c["decisions"],
                "write_drains": c["write_drains"],
                "bursts_scheduled_by_command": c["scheduled_by_command"],
                "bursts_scheduled_in_order": bursts - c["scheduled_by_command"],
                "events_per_request": (c["grant_events"] + c["decision_events"]) / n,
                "decisions_per_request": c["decisions"] / n, "bursts_per_request": bursts / n}

    @property
    def static_mw(self) -> float:
        return self.spec.background_mw * self.spec.channels

    def extra_report(self) -> dict[str, Any]:
        """Row-buffer statistics and the resolved timing, for report["memory"]["dram"]."""
        c, s = self.counts, self.spec
        bursts = c["read_bursts"] + c["write_bursts"]
        end = self.env.now
        moved = bursts * s.burst_bytes
        return {
            "kind": "banked", "standard": s.standard, "preset": self.cfg.preset, "channels": s.channels,
            "page_policy": self.cfg.page_policy, "scheduler": self.cfg.scheduler, "refresh": self.cfg.refresh,
            "peak_bandwidth_gb_per_s": s.peak_gb_per_s,
            "achieved_bandwidth_gb_per_s": moved / end if end > 0 else 0.0,
            "row_hit_rate": c["row_hits"] / bursts if bursts else None,
            "row_hits": c["row_hits"], "row_misses": c["row_misses"], "row_conflicts": c["row_conflicts"],
            "activations": c["activations"],
            "read_bursts": c["read_bursts"], "write_bursts": c["write_bursts"],
            "burst_bytes": s.burst_bytes, "bytes_moved": moved,
            "overfetch_bytes": moved - c["read_bytes"] - c["write_bytes"], "refreshes": c["refreshes"],
            "channel_busy_ns": [p.busy_ns for p in self.ports],
            # the model's own cost: SimPy events and scheduling work per request (soc bench reads these)
            "controller": self.controller_cost(),
            "spec": dataclasses.asdict(s),
        }
