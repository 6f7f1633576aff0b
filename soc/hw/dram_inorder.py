"""The in-order path of the DRAM channel controller (soc/hw/dram_controller.py), for long requests.

A request of many bursts on a channel (a tile transfer of the SoC's dataflows) is scheduled at once: its
bursts in arrival order after FR-FCFS row grouping inside the request (per bank, bursts to the open row
first, then each row's bursts together, keeping the banks' interleaving), each column command after the
previous one on the data bus, each activate placed by the controller's activate window. A Python loop for
short requests; numpy for the hits of long ones, with one Python step per activate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from soc.hw.dram_controller import Part

NEVER = -1e18

#: Requests of at most this many bursts use a plain Python loop, longer ones numpy.
SMALL_REQUEST_BURSTS = 64


class InOrderPath:
    """Mixed into ``Channel``: uses its bank state, ``_activate``, ``_bus_ready``, ``col_slot`` and
    ``_count``."""

    def _in_order(self, batch: list[Part], write: bool, t0: float) -> float:
        """Each request in turn, its bursts in arrival order after per-bank row grouping (frfcfs)."""
        s = self.s
        for p in batch:
            bank, bg, row = p.bank, p.bg, p.row
            base = max(t0, self.floor_ns, self._bus_ready(write, int(bg[0]), int(p.rank[0])))
            if self.bus:
                base = max(base, self.col_slot(write, int(bg[0]), int(p.rank[0]), self.bus[-1][4]))
            serve = self._serve_small if len(bank) <= SMALL_REQUEST_BURSTS else self._serve_vector
            last_cmd, touched, acts, conflicts = serve(bank, bg, row, write, t0, base)
            after_col = (s.cwl_ns + s.t_burst_ns + s.twr_ns) if write else s.trtp_ns
            for b, (r, cmd_b) in touched.items():  # the request's last access to each bank
                if self.open_page:
                    self.open_row[b], self.lastop_ns[b] = r, cmd_b + after_col
                else:
                    self.open_row[b] = -1
                    self.ready_ns[b] = max(self.act_ns[b] + s.tras_ns, cmd_b + after_col) + s.trp_ns
            self._count(len(bank), acts, conflicts)
            end = last_cmd + (s.cwl_ns if write else s.cl_ns) + s.t_burst_ns
            self.last_cmd_ns, self.last_bg, self.last_rank, self.last_write = last_cmd, int(bg[-1]), int(
                p.rank[-1]), write
            self.bus_floor_ns = last_cmd + s.t_burst_ns
            self.bus.append([base, write, int(bg[0]), int(p.rank[0]), last_cmd, write, int(bg[-1]), int(p.rank[-1])])
            self.bus_starts.append(base)
            p.first_ns = base + (s.cwl_ns if write else s.cl_ns)
            p.end_ns = end
            self.claim_free_ns = end
        return self.last_cmd_ns

    def _serve_small(self, bank, bg, row, write, t0, base):
        """One burst at a time: (last command, {bank: (row, its last command)}, activates, conflicts)."""
        s = self.s
        bank, bg, row = bank.tolist(), bg.tolist(), row.tolist()
        if self.frfcfs and len(bank) > 1:
            perm = frfcfs_order(bank, row, self.open_row)
            bank, bg, row = [bank[q] for q in perm], [bg[q] for q in perm], [row[q] for q in perm]
        gap_l, gap_s = max(s.t_burst_ns, s.tccd_l_ns), max(s.t_burst_ns, s.tccd_s_ns)
        after_col = (s.cwl_ns + s.t_burst_ns + s.twr_ns) if write else s.trtp_ns
        seen: dict[int, tuple[int, float]] = {}
        acts = conflicts = 0
        cmd, prev_g = base, None
        for b, g, r in zip(bank, bg, row):
            chain = base if prev_g is None else cmd + (gap_l if g == prev_g else gap_s)
            p = seen.get(b)
            ref = p[0] if p is not None else self.open_row[b]
            if ref != r:
                acts += 1
                conflict = self.open_page and ref >= 0
                conflicts += conflict
                if p is not None:
                    pre_ok = max(self.act_ns[b] + s.tras_ns, p[1] + after_col)
                elif conflict:
                    pre_ok = max(self.act_ns[b] + s.tras_ns, self.lastop_ns[b])
                else:
                    pre_ok = None
                chain = max(chain, self._activate(b, g, conflict, pre_ok, t0) + s.trcd_ns)
            cmd, prev_g = chain, g
            seen[b] = (r, cmd)
        return cmd, seen, acts, conflicts

    def _serve_vector(self, bank, bg, row, write, t0, base):
        """The same rules over numpy arrays: hits advance by cumulative command gaps; only the bursts that
        need an activate (segment starts) are visited one by one."""
        s = self.s
        n = len(bank)
        pos = np.arange(n)
        open_row = np.asarray(self.open_row, dtype=np.int64)
        if self.frfcfs:
            bank, bg, row = frfcfs_vector(bank, bg, row, pos, open_row)
        by_bank = np.argsort(bank, kind="stable")
        sb = bank[by_bank]
        same = sb[1:] == sb[:-1]
        prev = np.full(n, -1, dtype=np.int64)  # previous burst to the same bank in service order
        prev[by_bank[1:][same]] = by_bank[:-1][same]
        ref_row = np.where(prev >= 0, row[prev], open_row[bank])
        new_run = ref_row != row
        conflict = new_run & (ref_row >= 0) if self.open_page else np.zeros(n, dtype=bool)
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
                    pre_ok = max(self.act_ns[b] + s.tras_ns, cmd_seg[pord_k[i]] + poff_k[i])
                elif conf_k[i]:
                    pre_ok = max(self.act_ns[b] + s.tras_ns, self.lastop_ns[b])
                else:
                    pre_ok = None
                chain = max(chain, self._activate(b, bg_k[i], conf_k[i], pre_ok, t0) + s.trcd_ns)
            cmd_seg.append(chain)
        ends = np.flatnonzero(np.append(~same, True))  # last burst of each bank in by-bank order
        last = by_bank[ends]
        cmd_last = (np.asarray(cmd_seg)[ordinal[last]] + offset[last]).tolist()
        touched = dict(zip(sb[ends].tolist(), zip(row[last].tolist(), cmd_last)))
        return cmd_seg[-1] + float(offset[-1]), touched, int(new_run.sum()), int(conflict.sum())




def frfcfs_order(bank: list[int], row: list[int], open_row: list[int]) -> list[int]:
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


def frfcfs_vector(bank, bg, row, pos, open_row):
    """``frfcfs_order`` over numpy arrays: one sort by (bank, not open row, row's first arrival, arrival)."""
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
