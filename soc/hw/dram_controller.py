"""Bank-level off-chip DRAM (``dram.kind: banked``): channels, bank groups, banks, row buffers, JEDEC timing.

Hardware modelled. Each channel has its own data bus and banks; a bank holds at most one open row. A burst
(``burst_length`` transfers of ``bus_bytes``) to the open row is a *hit* (column command only), to a
precharged bank a *miss* (activate, then tRCD), to a bank with another row open a *conflict* (precharge, tRP,
activate, tRCD). Column commands are spaced by tCCD_S/tCCD_L (other/same bank group) and by the burst on the
data bus; activates by tRRD_S/tRRD_L and at most four per tFAW; a precharge waits for tRAS after its activate,
tRTP after a read and tWR after write data; reads after writes wait tWTR, writes after reads a 2-cycle bus
turnaround. Refresh (optional) closes every row for tRFC once per tREFI. Closed-form checks: on an idle
channel a hit takes CL + burst, a miss tRCD + CL + burst, a conflict tRP + tRCD + CL + burst.

How it meets SimPy. ``access()`` turns a request into bursts (addresses decoded by ``address_mapping``) and a
per-channel controller computes, analytically and without one event per burst, when every burst's data leaves
the bus, given the banks' state; the request's claim on a channel is that channel's data bus for ``last data -
start``. Consecutive requests pipeline: a request's activates and column commands may issue while the previous
request's data is still on the bus. The cost is O(bursts): a Python loop for short requests, numpy plus a
Python step per activate for long ones.

Scheduling, honestly stated. Requests on a channel are served in the order they reach the controller (tickets
make the SimPy grant order equal that order). ``frfcfs`` reorders only *within* a request: per bank, bursts to
the open row go first and each row's bursts are served together, while the interleaving of banks is kept (the
SoC issues one request per stream at a time, so the controller queue rarely holds more than that). Activates
are issued in service order. The schedule assumes the request starts when the dataflow issues it or the
channel frees; if the transfer's links or SRAM banks delay it, the channel's timeline is shifted at start.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any

import numpy as np
import simpy

from soc.hw.base import Block, MemAccess, Port, register
from soc.hw.dram_presets import FIELDS, DramSpec, address_fields, resolve_spec

__all__ = ["BankedDram", "DramSpec", "resolve_spec"]

#: Requests (per channel) of at most this many bursts are scheduled by a plain Python loop; longer ones by the
#: vectorized path (same rules; numpy's fixed cost per call only pays off on long requests).
SMALL_REQUEST_BURSTS = 64

NEVER = -1e18


class _Channel:
    """One channel: its data bus (a ticketed claim, granted in the order requests reached the controller),
    its banks' row buffers and timing state (Python lists: a bank count is small and read one at a time)."""

    def __init__(self, env: simpy.Environment, port: Port, banks: int, first_refresh_ns: float) -> None:
        self.env, self.port = env, port
        self.order = port.order
        self.issued = 0          # tickets handed out by access()
        self.next_grant = 0      # ticket allowed to take the bus next
        self.busy = False
        self.waiting: dict[int, simpy.Event] = {}
        self.open_row = [-1] * banks
        self.act_ns = [NEVER] * banks      # last activate
        self.lastop_ns = [NEVER] * banks   # earliest precharge the column ops allow (tRTP / tWR)
        self.ready_ns = [0.0] * banks      # earliest activate of a precharged bank
        self.claim_free_ns = 0.0           # end of the last request's data
        self.floor_ns = 0.0                # no command before this (refresh)
        self.last_cmd_ns = NEVER
        self.last_bg = -1
        self.last_write = False
        self.last_wr_end_ns = NEVER
        self.last_act_ns = NEVER
        self.last_act_bg = -1
        self.faw: deque[float] = deque(maxlen=4)
        self.next_ref_ns = first_refresh_ns

    def shift(self, delta: float, since: float) -> None:
        """The newest scheduled request started ``delta`` later than assumed: move its timeline."""
        mv = lambda t: t + delta if t > since else t  # noqa: E731
        self.act_ns = [mv(t) for t in self.act_ns]
        self.lastop_ns = [mv(t) for t in self.lastop_ns]
        self.ready_ns = [mv(t) for t in self.ready_ns]
        self.faw = deque((mv(t) for t in self.faw), maxlen=4)
        self.claim_free_ns += delta
        self.last_cmd_ns += delta
        self.last_wr_end_ns, self.last_act_ns = mv(self.last_wr_end_ns), mv(self.last_act_ns)


class _BusClaim:
    """A request's claim on one channel's data bus, usable in ``hold``."""

    __slots__ = ("ch", "ticket", "est_start", "order")

    def __init__(self, ch: _Channel, ticket: int, est_start: float) -> None:
        self.ch, self.ticket, self.est_start, self.order = ch, ticket, est_start, ch.order

    def acquire(self) -> simpy.Event:
        ch = self.ch
        ev = ch.env.event()
        if not ch.busy and ch.next_grant == self.ticket:
            ch.busy = True
            ev.succeed()
        else:
            ch.waiting[self.ticket] = ev
        return ev

    def release(self, req: simpy.Event) -> None:
        ch = self.ch
        ch.busy = False
        ch.next_grant += 1
        nxt = ch.waiting.pop(ch.next_grant, None)
        if nxt is not None:
            ch.busy = True
            nxt.succeed()

    def charge(self, start_ns: float, duration_ns: float, label: str, args: dict[str, Any] | None) -> None:
        ch = self.ch
        delta = start_ns - self.est_start
        if delta > 1e-9 and self.ticket == ch.issued - 1:  # only the newest schedule can still be moved
            ch.shift(delta, self.est_start)
        ch.port.charge(start_ns, duration_ns, label, args)


@register("dram", "banked")
class BankedDram(Block):
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
        self.chans = [_Channel(env, self.port(f"ch{i}"), spec.banks_per_channel, spec.trefi_ns)
                      for i in range(spec.channels)]
        self._open_page = cfg.page_policy == "open"
        self._frfcfs = cfg.scheduler == "frfcfs"
        self._cursor = 0  # where=None: accesses stream through the address space
        self._capacity = spec.channels * spec.banks_per_channel * spec.rows_per_bank * spec.row_bytes
        for key in ("read_bytes", "write_bytes", "read_bursts", "write_bursts", "activations", "row_hits",
                    "row_misses", "row_conflicts", "refreshes"):
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
        """Field values of each burst (``bank`` is the flat bank index bankgroup * banks_per_group + bank)."""
        out = {name: (burst_idx >> shift) & mask for name, (shift, mask) in self._slices.items()}
        for name in FIELDS:
            out.setdefault(name, np.zeros_like(burst_idx))
        out["bank"] = out["bankgroup"] * (self.spec.banks_per_channel // self.spec.bank_groups) + out["bank"]
        return out

    # --- the SimPy face -------------------------------------------------------------------------------------
    def access(self, nbytes: float, write: bool, where: tuple[MemAccess, ...] | None = None
               ) -> list[tuple[_BusClaim, float]]:
        if nbytes <= 0:
            return []
        if where is None:
            where = (MemAccess(self._cursor, nbytes),)
            self._cursor = (self._cursor + math.ceil(nbytes)) % self._capacity
        self.count("write_bytes" if write else "read_bytes", nbytes)
        idx = self.bursts(where) % (self._capacity // self.spec.burst_bytes)  # addresses wrap at capacity
        self.count("write_bursts" if write else "read_bursts", len(idx))
        sl = self._slices
        row = (idx >> sl["row"][0]) & sl["row"][1] if "row" in sl else np.zeros_like(idx)
        bank = (idx >> sl["bank"][0]) & sl["bank"][1] if "bank" in sl else np.zeros_like(idx)
        if "bankgroup" in sl:
            bg = (idx >> sl["bankgroup"][0]) & sl["bankgroup"][1]
            bank = bg * (self.spec.banks_per_channel // self.spec.bank_groups) + bank
        else:
            bg = np.zeros_like(idx)
        now = self.env.now
        if len(self.chans) == 1:
            groups = [(0, bank, bg, row)]
        else:
            chan = (idx >> sl["channel"][0]) & sl["channel"][1]
            order = np.argsort(chan, kind="stable")  # keeps each channel's bursts in service order
            cuts = np.cumsum(np.bincount(chan, minlength=len(self.chans)))
            groups = [(c, bank[sel], bg[sel], row[sel])
                      for c, sel in enumerate(np.split(order, cuts[:-1])) if len(sel)]
        jobs = []
        for c, b, g, r in groups:
            ch = self.chans[c]
            start, end = self.schedule(ch, b, g, r, write, now)
            jobs.append((_BusClaim(ch, ch.issued, start), end - start))
            ch.issued += 1
        return jobs

    # --- the controller -------------------------------------------------------------------------------------
    def _refresh(self, ch: _Channel, start: float) -> None:
        """Issue every refresh due by ``start`` (postponed ones run back to back): precharge all, tRFC."""
        s = self.spec
        while ch.next_ref_ns <= start:
            t = max(ch.next_ref_ns, ch.claim_free_ns, ch.floor_ns, max(ch.ready_ns))
            opened = [b for b, r in enumerate(ch.open_row) if r >= 0]
            if opened:
                t = max(t, *(max(ch.act_ns[b] + s.tras_ns, ch.lastop_ns[b]) for b in opened)) + s.trp_ns
            end = t + s.trfc_ns
            n = len(ch.open_row)
            ch.open_row, ch.ready_ns, ch.floor_ns = [-1] * n, [end] * n, end
            ch.next_ref_ns += s.trefi_ns
            self.counts["refreshes"] += 1

    def _activate(self, ch: _Channel, b: int, g: int, conflict: bool, pre_ok: float | None,
                  t_arr: float) -> float:
        """When bank ``b`` can be activated: after its precharge (a conflict precharges now; a closed-page run
        was precharged automatically; ``pre_ok`` None: the bank is already precharged), then tRRD and tFAW."""
        s = self.spec
        if conflict:
            act = max(pre_ok, t_arr, ch.floor_ns) + s.trp_ns
        elif pre_ok is not None:
            act = max(pre_ok + s.trp_ns, t_arr, ch.floor_ns)
        else:
            act = max(ch.ready_ns[b], t_arr, ch.floor_ns)
        act = max(act, ch.last_act_ns + (s.trrd_l_ns if g == ch.last_act_bg else s.trrd_s_ns))
        if len(ch.faw) == 4:
            act = max(act, ch.faw[0] + s.tfaw_ns)
        ch.faw.append(act)
        ch.last_act_ns, ch.last_act_bg = act, g
        ch.act_ns[b] = act
        return act

    def schedule(self, ch: _Channel, bank: np.ndarray, bg: np.ndarray, row: np.ndarray, write: bool,
                 t_arr: float) -> tuple[float, float]:
        """Serve one request's bursts on ``ch``; return (start, end of the last data) and update the banks."""
        s = self.spec
        start = max(t_arr, ch.claim_free_ns)
        if self.cfg.refresh:
            self._refresh(ch, start)
        # first column command: after arrival and refresh, tCCD after the last one, bus turnaround, tWTR
        base = max(t_arr, ch.floor_ns)
        b0 = int(bg[0])
        if ch.last_write == write:
            tccd = s.tccd_l_ns if b0 == ch.last_bg else s.tccd_s_ns
            base = max(base, ch.last_cmd_ns + max(s.t_burst_ns, tccd))
        elif write:
            base = max(base, ch.claim_free_ns + 2 * s.tck_ns - s.cwl_ns)
        else:
            base = max(base, ch.last_wr_end_ns + (s.twtr_l_ns if b0 == ch.last_bg else s.twtr_s_ns))
        serve = self._serve_small if len(bank) <= SMALL_REQUEST_BURSTS else self._serve_vector
        last_cmd, touched, acts, conflicts = serve(ch, bank, bg, row, write, t_arr, base)
        n = len(bank)
        after_col = (s.cwl_ns + s.t_burst_ns + s.twr_ns) if write else s.trtp_ns
        for b, (r, cmd_b) in touched.items():  # the request's last access to each bank
            if self._open_page:
                ch.open_row[b], ch.lastop_ns[b] = r, cmd_b + after_col
            else:
                ch.open_row[b] = -1
                ch.ready_ns[b] = max(ch.act_ns[b] + s.tras_ns, cmd_b + after_col) + s.trp_ns
        c = self.counts
        c["activations"] += acts
        c["row_conflicts"] += conflicts
        c["row_misses"] += acts - conflicts
        c["row_hits"] += n - acts
        end = last_cmd + (s.cwl_ns if write else s.cl_ns) + s.t_burst_ns
        ch.last_cmd_ns, ch.last_bg, ch.last_write = last_cmd, int(bg[-1]), write
        if write:
            ch.last_wr_end_ns = end
        ch.claim_free_ns = end
        return start, end

    def _serve_small(self, ch, bank, bg, row, write, t_arr, base):
        """One burst at a time: (last command, {bank: (row, its last command)}, activates, conflicts)."""
        s = self.spec
        bank, bg, row = bank.tolist(), bg.tolist(), row.tolist()
        if self._frfcfs and len(bank) > 1:
            perm = _frfcfs_order(bank, row, ch.open_row)
            bank, bg, row = [bank[q] for q in perm], [bg[q] for q in perm], [row[q] for q in perm]
        gap_l, gap_s = max(s.t_burst_ns, s.tccd_l_ns), max(s.t_burst_ns, s.tccd_s_ns)
        after_col = (s.cwl_ns + s.t_burst_ns + s.twr_ns) if write else s.trtp_ns
        seen: dict[int, tuple[int, float]] = {}
        acts = conflicts = 0
        cmd, prev_g = base, None
        for b, g, r in zip(bank, bg, row):
            chain = base if prev_g is None else cmd + (gap_l if g == prev_g else gap_s)
            p = seen.get(b)
            ref = p[0] if p is not None else ch.open_row[b]
            if ref != r:
                acts += 1
                conflict = self._open_page and ref >= 0
                conflicts += conflict
                if p is not None:
                    pre_ok = max(ch.act_ns[b] + s.tras_ns, p[1] + after_col)
                elif conflict:
                    pre_ok = max(ch.act_ns[b] + s.tras_ns, ch.lastop_ns[b])
                else:
                    pre_ok = None
                chain = max(chain, self._activate(ch, b, g, conflict, pre_ok, t_arr) + s.trcd_ns)
            cmd, prev_g = chain, g
            seen[b] = (r, cmd)
        return cmd, seen, acts, conflicts

    def _serve_vector(self, ch, bank, bg, row, write, t_arr, base):
        """The same rules over numpy arrays: hits advance by cumulative command gaps; only the bursts that
        need an activate (segment starts) are visited one by one."""
        s = self.spec
        n = len(bank)
        pos = np.arange(n)
        open_row = np.asarray(ch.open_row, dtype=np.int64)
        if self._frfcfs:
            bank, bg, row = _frfcfs_vector(bank, bg, row, pos, open_row)
        by_bank = np.argsort(bank, kind="stable")
        sb = bank[by_bank]
        same = sb[1:] == sb[:-1]
        prev = np.full(n, -1, dtype=np.int64)  # previous burst to the same bank in service order
        prev[by_bank[1:][same]] = by_bank[:-1][same]
        ref_row = np.where(prev >= 0, row[prev], open_row[bank])
        new_run = ref_row != row
        conflict = new_run & (ref_row >= 0) if self._open_page else np.zeros(n, dtype=bool)
        gap_l, gap_s = max(s.t_burst_ns, s.tccd_l_ns), max(s.t_burst_ns, s.tccd_s_ns)
        if gap_l == gap_s:
            G = pos * gap_s
        else:
            G = np.zeros(n)
            np.cumsum(np.where(bg[1:] == bg[:-1], gap_l, gap_s), out=G[1:])
        seg = new_run.copy()
        seg[0] = True
        ordinal = np.cumsum(seg) - 1          # which segment each burst is in
        starts = np.flatnonzero(seg)
        offset = G - G[starts[ordinal]]       # command time after its segment's first command
        pk = prev[starts]
        has_p = pk >= 0
        pk0 = np.where(has_p, pk, 0)
        after_col = (s.cwl_ns + s.t_burst_ns + s.twr_ns) if write else s.trtp_ns
        G_k, bank_k, bg_k = G[starts].tolist(), bank[starts].tolist(), bg[starts].tolist()
        new_k, conf_k, hasp_k = new_run[starts].tolist(), conflict[starts].tolist(), has_p.tolist()
        pord_k, poff_k = ordinal[pk0].tolist(), (offset[pk0] + after_col).tolist()
        cmd_seg: list[float] = []
        for i in range(len(G_k)):
            chain = base if i == 0 else cmd_seg[-1] + G_k[i] - G_k[i - 1]
            if new_k[i]:
                b = bank_k[i]
                if hasp_k[i]:
                    pre_ok = max(ch.act_ns[b] + s.tras_ns, cmd_seg[pord_k[i]] + poff_k[i])
                elif conf_k[i]:
                    pre_ok = max(ch.act_ns[b] + s.tras_ns, ch.lastop_ns[b])
                else:
                    pre_ok = None
                chain = max(chain, self._activate(ch, b, bg_k[i], conf_k[i], pre_ok, t_arr) + s.trcd_ns)
            cmd_seg.append(chain)
        ends = np.flatnonzero(np.append(~same, True))  # last burst of each bank in by-bank order
        last = by_bank[ends]
        cmd_last = (np.asarray(cmd_seg)[ordinal[last]] + offset[last]).tolist()
        touched = dict(zip(sb[ends].tolist(), zip(row[last].tolist(), cmd_last)))
        return cmd_seg[-1] + float(offset[-1]), touched, int(new_run.sum()), int(conflict.sum())

    # --- what the report reads ------------------------------------------------------------------------------
    def dynamic_energy_pj(self) -> dict[str, float]:
        c, s = self.counts, self.spec
        bursts = c["read_bursts"] + c["write_bursts"]
        return {"activate": c["activations"] * s.activate_pj, "read": c["read_bursts"] * s.read_burst_pj,
                "write": c["write_bursts"] * s.write_burst_pj, "refresh": c["refreshes"] * s.refresh_pj,
                "io": bursts * s.burst_bytes * s.io_pj_per_byte}

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
            "spec": dataclasses.asdict(s),
        }


def _frfcfs_order(bank: list[int], row: list[int], open_row: list[int]) -> list[int]:
    """FR-FCFS within a request: per bank, bursts to the open row first, then each row's bursts together in
    order of first arrival; every bank keeps the slots it had, so bank interleaving is unchanged."""
    slots: dict[int, list[int]] = {}
    first: dict[tuple[int, int], int] = {}
    for q, (b, r) in enumerate(zip(bank, row)):
        slots.setdefault(b, []).append(q)
        first.setdefault((b, r), q)
    perm = list(range(len(bank)))
    for b, mine in slots.items():
        served = sorted(mine, key=lambda q: (row[q] != open_row[b], first[(b, row[q])], q))
        for slot, q in zip(mine, served):
            perm[slot] = q
    return perm


def _frfcfs_vector(bank, bg, row, pos, open_row):
    """``_frfcfs_order`` over numpy arrays: one sort by (bank, not open row, row's first arrival, arrival)."""
    n = len(bank)
    combo = bank * (int(row.max()) + 1) + row
    order = np.argsort(combo, kind="stable")
    sc = combo[order]
    run_start = np.empty(n, dtype=bool)
    run_start[0] = True
    np.not_equal(sc[1:], sc[:-1], out=run_start[1:])
    group_first = np.empty_like(pos)
    group_first[order] = order[run_start][np.cumsum(run_start) - 1]  # stable: a group's first is its earliest
    key = ((bank * 2 + (row != open_row[bank])) * n + group_first) * n + pos
    perm = np.empty_like(pos)
    perm[np.argsort(bank, kind="stable")] = np.argsort(key)
    return bank[perm], bg[perm], row[perm]
