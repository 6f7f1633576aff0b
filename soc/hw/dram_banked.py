"""Bank-level off-chip DRAM: channels, bank groups, banks and row buffers with JEDEC timing (``dram.kind: banked``).

Hardware modelled. Each channel has its own data bus and banks; a bank holds at most one open row. A burst
(``burst_length`` transfers of ``bus_bytes``) to the open row is a *hit* (column command only), to a precharged
bank a *miss* (activate, then tRCD), to a bank with another row open a *conflict* (precharge, tRP, activate,
tRCD). Column commands are spaced by tCCD_S/tCCD_L (other/same bank group) and by the burst on the data bus;
activates by tRRD_S/tRRD_L and at most four per tFAW; a precharge waits for tRAS after its activate, tRTP after
a read and tWR after write data; reads after writes wait tWTR, writes after reads a 2-cycle bus turnaround.
Refresh (optional) closes every row for tRFC once per tREFI. Closed-form checks: on an idle channel a hit
takes CL + burst, a miss tRCD + CL + burst, a conflict tRP + tRCD + CL + burst.

How it meets SimPy. ``access()`` turns a request into bursts (addresses decoded by ``address_mapping``) and a
per-channel controller computes, analytically and without one event per burst, when every burst's data leaves
the bus, given the banks' state; the request's claim on a channel is that channel's data bus for
``last data - start``. Consecutive requests pipeline: a request's activates and column commands may issue while
the previous request's data is still on the bus. The cost is O(bursts) numpy plus a Python step per activate.

Scheduling, honestly stated. Requests on a channel are served in the order they reach the controller (tickets
make the SimPy grant order equal that order). ``frfcfs`` reorders only *within* a request: per bank, bursts to
the open row go first and each row's bursts are served together, while the interleaving of banks is kept (the
SoC issues one request per stream at a time, so the controller queue rarely holds more than that). Activates
are issued in service order. The schedule assumes the request starts when the dataflow issues it or the channel
frees; if the transfer's links or SRAM banks delay it, the channel's timeline is shifted at start.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from soc.errors import ConfigError
from soc.hw.base import Block, MemAccess, Port, register
from soc.hw.dram_presets import PRESET_KEYS, PRESETS, peak_bandwidth_gb_per_s

FIELDS = ("row", "bank", "bankgroup", "channel", "column")


@dataclass(frozen=True)
class DramSpec:
    """A DRAM config with the preset filled in and the derived quantities every schedule needs."""
    standard: str
    channels: int
    banks_per_channel: int
    bank_groups: int
    rows_per_bank: int
    row_bytes: int
    bus_bytes: int
    burst_length: int
    data_rate_mtps: float
    cl_ns: float
    cwl_ns: float
    trcd_ns: float
    trp_ns: float
    tras_ns: float
    twr_ns: float
    trtp_ns: float
    twtr_s_ns: float
    twtr_l_ns: float
    tccd_s_ns: float
    tccd_l_ns: float
    trrd_s_ns: float
    trrd_l_ns: float
    tfaw_ns: float
    trfc_ns: float
    trefi_ns: float
    address_mapping: str
    activate_pj: float
    read_burst_pj: float
    write_burst_pj: float
    refresh_pj: float
    io_pj_per_byte: float
    background_mw: float

    @property
    def burst_bytes(self) -> int:
        return self.bus_bytes * self.burst_length

    @property
    def t_burst_ns(self) -> float:
        """Data-bus time of one burst: BL transfers at the data rate."""
        return self.burst_length * 1e3 / self.data_rate_mtps

    @property
    def tck_ns(self) -> float:
        return 2e3 / self.data_rate_mtps  # double data rate: two transfers per clock

    @property
    def peak_gb_per_s(self) -> float:
        return peak_bandwidth_gb_per_s(dataclasses.asdict(self))


def _pow2(value: int, key: str) -> int:
    if value < 1 or value & (value - 1):
        raise ConfigError(f"dram.{key}: expected a power of two for the address mapping, got {value}")
    return value.bit_length() - 1


def resolve_spec(cfg: Any) -> DramSpec:
    """Preset values overridden by every non-null ``dram.*`` field; checked for consistency."""
    preset = PRESETS[cfg.preset]
    vals = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else preset[k]) for k in PRESET_KEYS}
    spec = DramSpec(standard=preset["standard"], **vals)
    if spec.banks_per_channel % spec.bank_groups:
        raise ConfigError(f"dram.bank_groups: expected a divisor of banks_per_channel ({spec.banks_per_channel}), "
                          f"got {spec.bank_groups}")
    if spec.row_bytes % spec.burst_bytes:
        raise ConfigError(f"dram.row_bytes: expected a multiple of one burst ({spec.burst_bytes} bytes = "
                          f"bus_bytes x burst_length), got {spec.row_bytes}")
    _address_fields(spec)  # validates the mapping
    return spec


def _address_fields(spec: DramSpec) -> list[tuple[str, int]]:
    """(field, bits) from LSB to MSB above the burst offset."""
    bits = {"channel": _pow2(spec.channels, "channels"), "bankgroup": _pow2(spec.bank_groups, "bank_groups"),
            "bank": _pow2(spec.banks_per_channel // spec.bank_groups, "banks_per_channel"),
            "column": _pow2(spec.row_bytes // spec.burst_bytes, "row_bytes"),
            "row": _pow2(spec.rows_per_bank, "rows_per_bank")}
    _pow2(spec.burst_bytes, "bus_bytes")
    names = [f.strip() for f in spec.address_mapping.split(":")]
    bad = [f for f in names if f not in FIELDS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"dram.address_mapping: expected distinct fields from {', '.join(FIELDS)} separated by "
                          f"':', got {spec.address_mapping!r}")
    missing = [f for f in FIELDS if f not in names and bits[f] > 0]
    if missing:
        raise ConfigError(f"dram.address_mapping: {spec.address_mapping!r} lacks {', '.join(missing)} "
                          f"(needed: more than one of them exists)")
    return [(f, bits[f]) for f in reversed(names)]


class _Channel:
    """One channel: its data bus (a ticketed claim, granted in the order requests reached the controller),
    its banks' row buffers and timing state."""

    def __init__(self, env: simpy.Environment, port: Port, banks: int) -> None:
        self.env, self.port = env, port
        self.order = port.order
        self.issued = 0          # tickets handed out by access()
        self.next_grant = 0      # ticket allowed to take the bus next
        self.busy = False
        self.waiting: dict[int, simpy.Event] = {}
        self.open_row = np.full(banks, -1, dtype=np.int64)
        self.act_ns = np.full(banks, -1e18)      # last activate
        self.lastop_ns = np.full(banks, -1e18)   # earliest precharge allowed by column ops (tRTP / tWR)
        self.ready_ns = np.zeros(banks)          # earliest activate of a precharged bank
        self.claim_free_ns = 0.0                 # end of the last request's data
        self.floor_ns = 0.0                      # no command before (refresh)
        self.last_cmd_ns = -1e18
        self.last_bg = -1
        self.last_write = False
        self.last_wr_end_ns = -1e18
        self.last_act_ns = -1e18
        self.last_act_bg = -1
        self.faw: deque[float] = deque(maxlen=4)
        self.next_ref_ns = 0.0
        self.last_ticket_start = 0.0

    def shift(self, delta: float, since: float) -> None:
        """The last scheduled request started ``delta`` later than assumed: move its timeline."""
        for arr in (self.act_ns, self.lastop_ns, self.ready_ns):
            arr[arr > since] += delta
        self.claim_free_ns += delta
        self.last_cmd_ns += delta
        self.last_wr_end_ns = self.last_wr_end_ns + delta if self.last_wr_end_ns > since else self.last_wr_end_ns
        self.last_act_ns = self.last_act_ns + delta if self.last_act_ns > since else self.last_act_ns
        self.faw = deque((t + delta if t > since else t for t in self.faw), maxlen=4)


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
        self.fields = _address_fields(spec)
        self.chans = [_Channel(env, self.port(f"ch{i}"), spec.banks_per_channel) for i in range(spec.channels)]
        for ch in self.chans:
            ch.next_ref_ns = spec.trefi_ns
        self._cursor = 0  # where=None: accesses stream through the address space
        self._capacity = spec.channels * spec.banks_per_channel * spec.rows_per_bank * spec.row_bytes
        for key in ("read_bytes", "write_bytes", "read_bursts", "write_bursts", "activations", "row_hits",
                    "row_misses", "row_conflicts", "refreshes"):
            self.counts[key] = 0.0

    # --- addresses -------------------------------------------------------------------------------------------
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
            starts = acc.address + np.floor(np.arange(pieces) * (span / pieces)).astype(np.int64)
            lo, hi = starts // bb, (starts + piece - 1) // bb
            counts = hi - lo + 1
            idx = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
            keep = np.ones(len(idx), dtype=bool)
            keep[1:] = idx[1:] != idx[:-1]  # neighbouring pieces may share a burst
            parts.append(idx[keep])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def decode(self, burst_idx: np.ndarray) -> dict[str, np.ndarray]:
        """Field values of each burst (``bank`` is the flat bank index bankgroup * banks_per_group + bank)."""
        out, shift = {}, 0
        for name, bits in self.fields:
            out[name] = (burst_idx >> shift) & ((1 << bits) - 1)
            shift += bits
        for name in FIELDS:
            out.setdefault(name, np.zeros_like(burst_idx))
        out["bank"] = out["bankgroup"] * (self.spec.banks_per_channel // self.spec.bank_groups) + out["bank"]
        return out

    # --- the SimPy face --------------------------------------------------------------------------------------
    def access(self, nbytes: float, write: bool, where: tuple[MemAccess, ...] | None = None
               ) -> list[tuple[_BusClaim, float]]:
        if nbytes <= 0:
            return []
        if where is None:
            where = (MemAccess(self._cursor, nbytes),)
            self._cursor = (self._cursor + math.ceil(nbytes)) % self._capacity
        self.count("write_bytes" if write else "read_bytes", nbytes)
        idx = self.bursts(where) % (self._capacity // self.spec.burst_bytes)  # addresses wrap at capacity
        f = self.decode(idx)
        self.count("write_bursts" if write else "read_bursts", len(idx))
        chan = f["channel"]
        now = self.env.now
        if len(self.chans) == 1:
            groups = [(0, slice(None))]
        else:
            order = np.argsort(chan, kind="stable")
            present, starts = np.unique(chan[order], return_index=True)
            bounds = list(starts[1:]) + [len(order)]
            groups = [(int(c), np.sort(order[s:e])) for c, s, e in zip(present, starts, bounds)]
        jobs = []
        for c, sel in groups:
            ch = self.chans[c]
            start, end = self.schedule(ch, f["bank"][sel], f["bankgroup"][sel], f["row"][sel], write, now)
            claim = _BusClaim(ch, ch.issued, start)
            ch.issued += 1
            jobs.append((claim, end - start))
        return jobs

    # --- the controller --------------------------------------------------------------------------------------
    def _refresh(self, ch: _Channel, start: float) -> None:
        """Issue every refresh due by ``start`` (postponed ones run back to back): precharge all, tRFC."""
        s = self.spec
        while ch.next_ref_ns <= start:
            opened = ch.open_row >= 0
            t = max(ch.next_ref_ns, ch.claim_free_ns, ch.floor_ns, float(ch.ready_ns.max()))
            if opened.any():
                t = max(t, float(np.maximum(ch.act_ns + s.tras_ns, ch.lastop_ns)[opened].max())) + s.trp_ns
            end = t + s.trfc_ns
            ch.open_row[:] = -1
            ch.ready_ns[:] = end
            ch.floor_ns = end
            ch.next_ref_ns += s.trefi_ns
            self.counts["refreshes"] += 1

    def schedule(self, ch: _Channel, bank: np.ndarray, bg: np.ndarray, row: np.ndarray, write: bool,
                 t_arr: float) -> tuple[float, float]:
        """Serve one request's bursts on ``ch``; return (start, end of the last data) and update the banks."""
        s = self.spec
        start = max(t_arr, ch.claim_free_ns)
        if self.cfg.refresh:
            self._refresh(ch, start)
        n = len(bank)
        pos = np.arange(n)
        if self.cfg.scheduler == "frfcfs" and n > 1:
            bank, bg, row = self._frfcfs(ch, bank, bg, row, pos)
        # previous burst to the same bank in service order (-1: none in this request)
        by_bank = np.argsort(bank, kind="stable")
        prev = np.full(n, -1, dtype=np.int64)
        same = bank[by_bank[1:]] == bank[by_bank[:-1]]
        prev[by_bank[1:][same]] = by_bank[:-1][same]
        ref_row = np.where(prev >= 0, row[prev], ch.open_row[bank])
        new_run = ref_row != row
        conflict = new_run & (ref_row >= 0) if self.cfg.page_policy == "open" else np.zeros(n, dtype=bool)
        # column-command spacing between consecutive bursts: burst on the bus, tCCD by bank group
        gap = np.empty(n)
        gap[0] = 0.0
        gap[1:] = np.maximum(s.t_burst_ns, np.where(bg[1:] == bg[:-1], s.tccd_l_ns, s.tccd_s_ns))
        G = np.cumsum(gap)
        seg = new_run.copy()
        seg[0] = True
        seg_of = np.maximum.accumulate(np.where(seg, pos, 0))
        lat = s.cwl_ns if write else s.cl_ns
        # first column command: after the arrival, refresh, tCCD after the last one, bus turnaround, tWTR
        base = max(t_arr, ch.floor_ns)
        b0 = int(bg[0])
        if ch.last_write == write:
            base = max(base, ch.last_cmd_ns + max(s.t_burst_ns, s.tccd_l_ns if b0 == ch.last_bg else s.tccd_s_ns))
        elif write:
            base = max(base, ch.claim_free_ns + 2 * s.tck_ns - s.cwl_ns)
        else:
            base = max(base, ch.last_wr_end_ns + (s.twtr_l_ns if b0 == ch.last_bg else s.twtr_s_ns))
        cmd_at = np.zeros(n)
        seg_list = np.flatnonzero(seg).tolist()
        G_l, bank_l, bg_l, prev_l = G.tolist(), bank.tolist(), bg.tolist(), prev.tolist()
        conflict_l, new_l, segof_l = conflict.tolist(), new_run.tolist(), seg_of.tolist()
        after_col = (s.cwl_ns + s.t_burst_ns + s.twr_ns) if write else s.trtp_ns
        prev_s = -1
        for k in seg_list:
            chain = base if prev_s < 0 else cmd_at[prev_s] + G_l[k] - G_l[prev_s]
            if new_l[k]:
                b, p = bank_l[k], prev_l[k]
                if p >= 0:
                    sp = segof_l[p]
                    pre_ok = max(float(ch.act_ns[b]) + s.tras_ns, cmd_at[sp] + G_l[p] - G_l[sp] + after_col)
                else:
                    pre_ok = max(float(ch.act_ns[b]) + s.tras_ns, float(ch.lastop_ns[b]))
                if conflict_l[k]:
                    act = max(pre_ok, t_arr, ch.floor_ns) + s.trp_ns
                elif p >= 0:  # closed page: the earlier run auto-precharged
                    act = max(pre_ok + s.trp_ns, t_arr, ch.floor_ns)
                else:
                    act = max(float(ch.ready_ns[b]), t_arr, ch.floor_ns)
                act = max(act, ch.last_act_ns + (s.trrd_l_ns if bg_l[k] == ch.last_act_bg else s.trrd_s_ns))
                if len(ch.faw) == 4:
                    act = max(act, ch.faw[0] + s.tfaw_ns)
                ch.faw.append(act)
                ch.last_act_ns, ch.last_act_bg = act, bg_l[k]
                ch.act_ns[b] = act
                chain = max(chain, act + s.trcd_ns)
            cmd_at[k] = chain
            prev_s = k
        cmd = cmd_at[seg_of] + G - G[seg_of]
        end = float(cmd[-1]) + lat + s.t_burst_ns
        # bank state after the request: its last access to each bank
        rev_banks, rev_first = np.unique(bank[::-1], return_index=True)
        last = n - 1 - rev_first
        lastop = cmd[last] + after_col
        if self.cfg.page_policy == "open":
            ch.open_row[rev_banks] = row[last]
            ch.lastop_ns[rev_banks] = lastop
        else:
            ch.open_row[rev_banks] = -1
            ch.ready_ns[rev_banks] = np.maximum(ch.act_ns[rev_banks] + s.tras_ns, lastop) + s.trp_ns
        acts = int(new_run.sum())
        n_conf = int(conflict.sum())
        c = self.counts
        c["activations"] += acts
        c["row_conflicts"] += n_conf
        c["row_misses"] += acts - n_conf
        c["row_hits"] += n - acts
        ch.last_cmd_ns, ch.last_bg, ch.last_write = float(cmd[-1]), int(bg[-1]), write
        if write:
            ch.last_wr_end_ns = end
        ch.claim_free_ns = end
        return start, end

    @staticmethod
    def _frfcfs(ch: _Channel, bank, bg, row, pos):
        """Per bank: bursts to the open row first, then each row's bursts together in order of first arrival;
        the slots each bank occupies in the sequence are kept, so bank interleaving is unchanged."""
        combo = bank * (int(row.max()) + 1) + row
        _, first, inv = np.unique(combo, return_index=True, return_inverse=True)
        group_first = first[inv]
        miss_open = row != ch.open_row[bank]
        served = np.lexsort((pos, group_first, miss_open, bank))
        slots = np.argsort(bank, kind="stable")
        perm = np.empty_like(pos)
        perm[slots] = served
        return bank[perm], bg[perm], row[perm]

    # --- what the report reads ---------------------------------------------------------------------------------
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
            "activations": c["activations"], "read_bursts": c["read_bursts"], "write_bursts": c["write_bursts"],
            "burst_bytes": s.burst_bytes, "bytes_moved": moved,
            "overfetch_bytes": moved - c["read_bytes"] - c["write_bytes"], "refreshes": c["refreshes"],
            "channel_busy_ns": [p.busy_ns for p in self.ports],
            "spec": dataclasses.asdict(s),
        }
