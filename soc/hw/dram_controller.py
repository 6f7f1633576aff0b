"""The per-channel DRAM controller of ``dram.kind: banked``: a bounded transaction queue, FR-FCFS, write buffer.

A channel's controller holds the reads that reached it (at most ``queue_depth`` requests; more wait outside)
in per-bank queues, and a write buffer. Writes are posted (done when their data is in the buffer); the
buffer drains in one batch at ``write_high_watermark`` bursts, or above ``write_low_watermark`` once the bus
has no reads left. Timing is analytic, without one SimPy event per burst:

- A bank *decides* its queued bursts at once when its committed work ends within a row cycle (tRAS + tRP),
  else at that point (one timer event), so requests arriving meanwhile are reordered together.
- FR-FCFS: among a bank's first ``bank_queue_depth`` queued bursts, those to the open row go first (oldest
  first); only when none is left is the bank precharged and the oldest other row opened.
- Activates and column commands are placed in the channel's committed timelines wherever they fit: an
  activate keeps tRRD_S/L to every committed activate of its rank and at most four per tFAW; a column
  command fits a hole on the data bus (tCCD_S/L and the burst within a rank, burst + tRTRS across ranks, the
  read/write turnarounds). So an idle bank activates while another waits on tRC, and a later request's hit
  may use bus time an earlier request's activate left free. Within a decision the command that can issue
  earliest is committed first (a lazy heap over the banks).
- Parts of more than ``LIST_LIMIT`` bursts (the SoC's tile transfers) take the in-order path at once
  (soc/hw/dram_inorder.py): a Python step per activate instead of per burst.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import deque
from heapq import heapify, heappop, heappush
from typing import Any, Callable

import numpy as np

from soc.hw.dram_inorder import NEVER, InOrderPath

#: Reads of at most this many bursts on a channel go through the per-bank queues and the command-by-command
#: scheduler; longer ones through the in-order path. 16: the mem-hbm2 MiniLM run spent 1.8x the wall time of
#: the old model with 256 (most of its bursts are in parts of 17-256), 1.1x with 16.
LIST_LIMIT = 16


class Part:
    """One request's bursts on one channel (flat bank = rank, group, bank), and when its data ends."""

    __slots__ = ("bank", "bg", "rank", "row", "write", "done", "end_ns", "first_ns", "busy_ns", "left")

    def __init__(self, bank: np.ndarray, bg: np.ndarray, rank: np.ndarray, row: np.ndarray, write: bool,
                 done: Callable[["Part"], None]) -> None:
        self.bank, self.bg, self.rank, self.row, self.write, self.done = bank, bg, rank, row, write, done
        self.end_ns = self.first_ns = 0.0
        self.busy_ns = 0.0
        self.left = 0


class Channel(InOrderPath):
    """One channel's banks, data bus and controller queues."""

    def __init__(self, env, port, spec, cfg, counts: dict[str, float]) -> None:
        self.env, self.port, self.s, self.cfg, self.counts = env, port, spec, cfg, counts
        self.bpc = spec.banks_per_channel
        nb = spec.ranks * spec.banks_per_channel
        self.open_row = [-1] * nb
        self.act_ns = [NEVER] * nb         # last activate
        self.lastop_ns = [NEVER] * nb      # earliest precharge the column ops allow (tRTP / tWR)
        self.ready_ns = [0.0] * nb         # earliest activate of a precharged bank
        # committed activates per rank and column commands, by time: later work may fill earlier gaps
        self.acts: list[list[tuple[float, int]]] = [[] for _ in range(spec.ranks)]
        # the data bus as busy stretches of column commands: [first t, w, g, r, last t, w, g, r]; holes
        # narrower than two bursts are merged away (nothing fits in them)
        self.bus: list[list] = []
        self.bus_starts: list[float] = []
        self.bus_floor_ns = NEVER          # the in-order path's last column command
        self.gaps = self._gap_table()
        self.tb = spec.t_burst_ns
        self.claim_free_ns = 0.0           # end of the last data on the bus
        self.floor_ns = 0.0                # no command before this (refresh)
        self.last_cmd_ns = NEVER
        self.last_bg = self.last_rank = -1
        self.last_write = False
        self.next_ref_ns = spec.trefi_ns
        self.bank_q: dict[int, list[tuple[Part, list[int]]]] = {}  # reads waiting per bank
        self.bank_next: dict[int, float] = {}  # when each bank takes its next decision
        self.timers: set[int] = set()      # banks with a decision event scheduled
        self.queued = 0                    # reads in the transaction queue (not yet scheduled)
        self.overflow: deque[Part] = deque()  # reads beyond queue_depth, waiting outside
        self.writes: list[Part] = []
        self.write_bursts = 0
        self.drain_timer = False
        self.open_page = cfg.page_policy == "open"
        self.frfcfs = cfg.scheduler == "frfcfs"

    # --- the queue ------------------------------------------------------------------------------------------
    def submit(self, part: Part) -> None:
        now = self.env.now
        n = len(part.bank)
        if part.write:
            self.writes.append(part)
            self.write_bursts += n
            if self.write_bursts <= self.cfg.write_high_watermark:
                # posted: accepted into the buffer as its data arrives at the channel's rate
                part.first_ns, part.end_ns = now, now + n * self.tb
                part.done(part)
                part.done = _nothing
            self._maybe_drain(now)
            self._idle_drain_later(now)
        elif n > LIST_LIMIT or not self.frfcfs:
            self._maybe_drain(now)
            self._begin(now)
            self._in_order([part], False, now)
            part.done(part)
        elif self.queued >= self.cfg.queue_depth:
            self.overflow.append(part)
        else:
            self._enqueue(part, now)

    def _enqueue(self, part: Part, now: float) -> None:
        """Queue a read's bursts at their banks; each bank is scheduled when its committed work nears its end."""
        self.queued += 1
        banks = part.bank.tolist()
        by_bank: dict[int, list[int]] = {}
        for i, b in enumerate(banks):
            by_bank.setdefault(b, []).append(i)
        part.left = len(by_bank)
        for b, idx in by_bank.items():
            self.bank_q.setdefault(b, []).append((part, idx))
        for b in by_bank:
            self._wake_bank(b, now)

    def _wake_bank(self, b: int, now: float) -> None:
        if b in self.timers or not self.bank_q.get(b):
            return
        due = self.bank_next.get(b, 0.0)
        if now >= due:
            self._decide_bank(b, now)
        else:
            self.timers.add(b)
            self.counts["decision_events"] += 1
            self.env.timeout(due - now).callbacks.append(lambda _e, b=b: self._on_bank_timer(b))

    def _on_bank_timer(self, b: int) -> None:
        self.timers.discard(b)
        self._decide_bank(b, self.env.now)

    def _begin(self, t: float) -> None:
        if self.cfg.refresh:
            self._refresh(max(t, self.claim_free_ns))
        self.counts["decisions"] += 1
        self.prune(t)

    def _decide_bank(self, b: int, t: float) -> None:
        """Schedule every read queued at bank ``b`` (FR-FCFS within its visible queue), gap-filling the
        channel's activate and data-bus timelines."""
        self._maybe_drain(t)
        pieces, self.bank_q[b] = self.bank_q[b], []
        self._begin(t)
        bursts = []
        for k, (part, idx) in enumerate(pieces):
            bank, bg, rank, row = part.bank, part.bg, part.rank, part.row
            bursts += [(int(bank[i]), int(bg[i]), int(rank[i]), int(row[i]), k) for i in idx]
        ends, firsts, last_col = self._list(bursts, len(pieces), False, t)
        for k, (part, _idx) in enumerate(pieces):
            part.end_ns = max(part.end_ns, ends[k])
            part.first_ns = min(part.first_ns, firsts[k]) if part.first_ns else firsts[k]
            part.left -= 1
            if not part.left:
                self.queued -= 1
                part.done(part)
        while self.overflow and self.queued < self.cfg.queue_depth:
            self._enqueue(self.overflow.popleft(), t)
        self.bank_next[b] = max(t, last_col - self.s.tras_ns - self.s.trp_ns)  # one row cycle ahead
        self._wake_bank(b, t)
        self._idle_drain_later(t)

    def _idle_drain_later(self, t: float) -> None:
        """Buffered writes above the low watermark drain when the bus runs out of reads."""
        if (self.write_bursts > self.cfg.write_low_watermark and not self.queued and not self.drain_timer):
            self.drain_timer = True
            self.counts["decision_events"] += 1
            self.env.timeout(max(0.0, self.last_cmd_ns - t)).callbacks.append(self._on_drain_timer)

    def _on_drain_timer(self, _event: Any) -> None:
        self.drain_timer = False
        now = self.env.now
        self._maybe_drain(now)
        self._idle_drain_later(now)

    def _maybe_drain(self, t: float) -> None:
        """Drain the write buffer when it reaches the high watermark, or above the low one when idle."""
        cfg = self.cfg
        if self.write_bursts >= cfg.write_high_watermark or (
                self.write_bursts > cfg.write_low_watermark and not self.queued and self.last_cmd_ns <= t):
            batch, self.writes, self.write_bursts = self.writes, [], 0
            self.counts["write_drains"] += 1
            self._begin(t)
            if sum(len(p.bank) for p in batch) <= max(LIST_LIMIT, cfg.write_high_watermark) and self.frfcfs:
                bursts = []
                for k, p in enumerate(batch):
                    bursts += [(b, g, r, w, k) for b, g, r, w in zip(p.bank.tolist(), p.bg.tolist(),
                                                                      p.rank.tolist(), p.row.tolist())]
                ends, firsts, _ = self._list(bursts, len(batch), True, t)
                for k, p in enumerate(batch):
                    p.first_ns, p.end_ns = firsts[k], ends[k]
            else:
                self._in_order(batch, True, t)
            for p in batch:
                p.done(p)

    # --- refresh ----------------------------------------------------------------------------------------------
    def _refresh(self, start: float) -> None:
        """Issue every refresh due by ``start`` (postponed ones run back to back): precharge all, tRFC."""
        s = self.s
        while self.next_ref_ns <= start:
            t = max(self.next_ref_ns, self.claim_free_ns, self.floor_ns, max(self.ready_ns))
            opened = [b for b, r in enumerate(self.open_row) if r >= 0]
            if opened:
                t = max(t, *(max(self.act_ns[b] + s.tras_ns, self.lastop_ns[b]) for b in opened)) + s.trp_ns
            end = t + s.trfc_ns
            n = len(self.open_row)
            self.open_row, self.ready_ns, self.floor_ns = [-1] * n, [end] * n, end
            self.next_ref_ns += s.trefi_ns
            self.counts["refreshes"] += 1

    # --- shared timing rules ------------------------------------------------------------------------------------
    def _activate(self, b: int, g: int, conflict: bool, pre_ok: float | None, t0: float) -> float:
        """Commit an activate of bank ``b``: after its precharge (a conflict precharges now; ``pre_ok`` of a
        closed-page run: precharged automatically; None: already precharged), tRRD and tFAW of its rank."""
        s = self.s
        if conflict:
            act = max(pre_ok, t0, self.floor_ns) + s.trp_ns
        elif pre_ok is not None:
            act = max(pre_ok + s.trp_ns, t0, self.floor_ns)
        else:
            act = max(self.ready_ns[b], t0, self.floor_ns)
        r = b // self.bpc
        act = self.act_slot(r, g, act)
        insort(self.acts[r], (act, g))
        self.act_ns[b] = act
        return act

    def act_slot(self, r: int, g: int, want: float) -> float:
        """Earliest activate at or after ``want`` that keeps tRRD_S/L to every committed activate of rank
        ``r`` and at most four in any tFAW window."""
        s = self.s
        acts = self.acts[r]
        trrd_l, trrd_s, tfaw = s.trrd_l_ns, s.trrd_s_ns, s.tfaw_ns
        eps = 1e-9
        a = want
        while True:
            i = bisect_left(acts, (a - trrd_l - eps, -1))
            moved = False
            while i < len(acts) and acts[i][0] < a + trrd_l - eps:
                x, xg = acts[i]
                gap = trrd_l if xg == g else trrd_s
                if abs(x - a) < gap - eps:
                    a, moved = x + gap, True
                    break
                i += 1
            if moved:
                continue
            lo = bisect_right(acts, (a - tfaw + eps, 1 << 30))
            hi = bisect_left(acts, (a + tfaw - eps, -1))
            w = [x for x, _ in acts[lo:hi]]
            pos = bisect_right(w, a)
            w.insert(pos, a)
            for k in range(max(0, pos - 4), min(pos, len(w) - 5) + 1):
                if w[k + 4] - w[k] < tfaw - eps:
                    a = w[k] + tfaw if pos == k + 4 else w[pos + 1] + eps
                    moved = True
                    break
            if not moved:
                return a

    def _gap_table(self) -> list[float]:
        """Minimum time between column commands, indexed by ``_gap_index``."""
        s = self.s
        table = [0.0] * 16
        for w1 in (0, 1):
            for w2 in (0, 1):
                for same_g in (0, 1):
                    for same_r in (0, 1):
                        if w1 == w2:
                            gap = (max(s.t_burst_ns, s.tccd_l_ns if same_g else s.tccd_s_ns) if same_r
                                   else s.t_burst_ns + s.trtrs_ns)
                        elif w2:  # read -> write: the bus turns around after the read data
                            gap = (s.cl_ns + s.t_burst_ns + 2 * s.tck_ns - s.cwl_ns
                                   + (0.0 if same_r else s.trtrs_ns))
                        elif same_r:
                            gap = s.cwl_ns + s.t_burst_ns + (s.twtr_l_ns if same_g else s.twtr_s_ns)
                        else:
                            gap = s.cwl_ns + s.t_burst_ns + s.trtrs_ns - s.cl_ns
                        table[w1 << 3 | w2 << 2 | same_g << 1 | same_r] = gap
        return table

    def col_gap(self, w1: bool, g1: int, r1: int, w2: bool, g2: int, r2: int) -> float:
        """Minimum time from a column command (w1, group g1, rank r1) to the next (w2, g2, r2)."""
        return self.gaps[w1 << 3 | w2 << 2 | (g1 == g2) << 1 | (r1 == r2)]

    def col_slot(self, w: bool, g: int, r: int, want: float) -> float:
        """Earliest column command at or after ``want`` in a hole of the committed ones on the data bus."""
        bus, starts, gap = self.bus, self.bus_starts, self.col_gap
        t = max(want, self.bus_floor_ns)
        while True:
            i = bisect_right(starts, t)
            if i:
                a = bus[i - 1]
                lo = a[4] + gap(a[5], a[6], a[7], w, g, r)
                if t < lo - 1e-9:
                    t = lo
                    continue
            if i < len(bus):
                b = bus[i]
                if b[0] < t + gap(w, g, r, b[1], b[2], b[3]) - 1e-9:
                    t = b[4] + gap(b[5], b[6], b[7], w, g, r)
                    continue
            return t

    def col_commit(self, t: float, w: bool, g: int, r: int) -> None:
        bus, starts = self.bus, self.bus_starts
        near = 2 * self.tb - 1e-9
        i = bisect_right(starts, t)
        prev = i > 0 and t - bus[i - 1][4] < near
        nxt = i < len(bus) and bus[i][0] - t < near
        if prev and nxt:
            bus[i - 1][4:] = bus[i][4:]
            del bus[i], starts[i]
        elif prev:
            bus[i - 1][4:] = [t, w, g, r]
        elif nxt:
            bus[i][:4] = [t, w, g, r]
            starts[i] = t
        else:
            bus.insert(i, [t, w, g, r, t, w, g, r])
            starts.insert(i, t)

    def prune(self, t0: float) -> None:
        """Forget commands too old to constrain anything at or after ``t0``."""
        horizon = t0 - 4 * (self.s.tfaw_ns + self.s.cl_ns + self.s.twtr_l_ns + self.s.t_burst_ns)
        for r, acts in enumerate(self.acts):
            if acts and acts[0][0] < horizon:
                self.acts[r] = acts[bisect_left(acts, (horizon, -1)):]
        k = 0
        while k < len(self.bus) and self.bus[k][4] < horizon:
            k += 1
        if k:
            del self.bus[:k], self.bus_starts[:k]

    def _bus_ready(self, write: bool, g: int, r: int) -> float:
        """Earliest column command on the data bus after the last one."""
        return self.last_cmd_ns + self.col_gap(self.last_write, self.last_bg, self.last_rank, write, g, r)

    # --- command by command: FR-FCFS with cross-bank look-ahead -----------------------------------------------
    def _list(self, bursts: list[tuple[int, int, int, int, int]], owners: int, write: bool, t0: float
              ) -> tuple[list[float], list[float], float]:
        """Issue ``bursts`` (bank, group, rank, row, owner) command by command; per owner the end of its last
        data and the start of its first, and the last column command."""
        s = self.s
        last_col = NEVER
        banks = [x[0] for x in bursts]
        bgs = [x[1] for x in bursts]
        ranks = [x[2] for x in bursts]
        rows = [x[3] for x in bursts]
        owner = [x[4] for x in bursts]
        pend: dict[int, list[int]] = {}
        for i, b in enumerate(banks):
            pend.setdefault(b, []).append(i)
        col_ok = {b: self.act_ns[b] + s.trcd_ns for b in pend}
        tb = self.tb
        lat = (s.cwl_ns if write else s.cl_ns) + tb
        after_col = (s.cwl_ns + tb + s.twr_ns) if write else s.trtp_ns
        ends = [NEVER] * owners
        firsts = [1e300] * owners
        depth = self.cfg.bank_queue_depth
        acts = conflicts = 0
        open_row, lastop = self.open_row, self.lastop_ns

        def candidate(b: int) -> tuple[float, int, int, int]:
            """(time, 0: activate / 1: column, burst, bank): the bank's next command (FR-FCFS)."""
            lst = pend[b]
            orow = open_row[b]
            if orow >= 0:
                for i in lst[:depth]:
                    if rows[i] == orow:
                        return (self.col_slot(write, bgs[i], ranks[i], max(col_ok[b], t0, self.floor_ns)),
                                1, i, b)
                a = max(self.act_ns[b] + s.tras_ns, lastop[b], t0, self.floor_ns) + s.trp_ns
            else:
                a = max(self.ready_ns[b], t0, self.floor_ns)
            i = lst[0]
            return self.act_slot(b // self.bpc, bgs[i], a), 0, i, b

        # Lazy selection: a bank's cached candidate stays a lower bound while other banks commit (they only
        # fill the bus and the activate window), so only the popped bank is re-evaluated.
        heap = [candidate(b) for b in pend]
        heapify(heap)
        while heap:
            cand = heappop(heap)
            fresh = candidate(cand[3])
            if heap and fresh > heap[0]:
                heappush(heap, fresh)
                continue
            _, kind, i, b = fresh
            if kind == 0:
                conflict = open_row[b] >= 0
                pre_ok = max(self.act_ns[b] + s.tras_ns, lastop[b]) if conflict else None
                act = self._activate(b, bgs[i], conflict, pre_ok, t0)
                open_row[b] = rows[i]
                col_ok[b] = act + s.trcd_ns
                acts += 1
                conflicts += conflict
                heappush(heap, candidate(b))
                continue
            t = fresh[0]
            lst = pend[b]
            lst.remove(i)
            self.col_commit(t, write, bgs[i], ranks[i])
            if t >= self.last_cmd_ns:
                self.last_cmd_ns, self.last_bg, self.last_rank, self.last_write = t, bgs[i], ranks[i], write
            end = t + lat
            self.claim_free_ns = max(self.claim_free_ns, end)
            lastop[b] = max(lastop[b], t + after_col)
            last_col = max(last_col, t)
            k = owner[i]
            ends[k] = max(ends[k], end)
            firsts[k] = min(firsts[k], end - tb)
            if not self.open_page and not any(rows[j] == rows[i] for j in lst[:depth]):
                self.ready_ns[b] = max(self.act_ns[b] + s.tras_ns, lastop[b]) + s.trp_ns
                open_row[b] = -1
            if lst:
                heappush(heap, candidate(b))
            else:
                del pend[b]
        self._count(len(banks), acts, conflicts)
        self.counts["scheduled_by_command"] += len(banks)
        return ends, firsts, last_col

    def _count(self, n: int, acts: int, conflicts: int) -> None:
        c = self.counts
        c["activations"] += acts
        c["row_conflicts"] += conflicts
        c["row_misses"] += acts - conflicts
        c["row_hits"] += n - acts

def _nothing(_part: Part) -> None:
    pass
