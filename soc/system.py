"""The SoC as SimPy processes: build the blocks from a config, wire them on the interconnect, run the tiles.

Phases: build (blocks from the registry by kind) -> elaborate (graph checks, routes, capacities) -> run ->
collect. Per CIM/digital pair three processes overlap:

- ``cim.loader``: prefetches query tiles and key MSBs from DRAM into SRAM and the query MSBs into the array's
  double-buffered input register, two tiles ahead;
- ``cim``: loads (when needed) the key tile into the array, scores, sends the keep bitmap and
  puts the tile into the token buffer (waiting while it is full: back-pressure);
- ``fetch``: takes a tile from the token buffer and fetches the K/V rows it needs from DRAM into SRAM, then hands
  it to the digital side through a two-slot K/V buffer (double buffering);
- ``digital``: reads the rows from SRAM, computes the kept pairs, writes the output when a query tile is done.

So the CIM scores tile i+1 while the digital processor computes tile i, and K/V loads overlap compute.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import simpy

from soc import progress
from soc.config.schema import SocConfig
from soc.dataflow import AddressMap, Placement, Shape, addresses, demand, key_tile_keys, kv_placement
from soc.errors import SimulationStalled, WiringError
from soc.hw import base as hwbase
from soc.hw.base import Block, Fifo, MemAccess, hold
from soc.recorder import OFF, Recorder
from soc.rules import pair_of_kv_head
from soc.tech import tech_of, unmodelled
from soc.topology import resolve_interconnect

# fields of the per-chunk tuple the processes read (a tuple: attribute access costs more than indexing)
_ROW = ("layer", "head", "qtile", "ktile", "pairs_kept", "q_load_bytes", "q_msb_bytes", "kmsb_fetch_bytes",
        "kmsb_load_bytes", "write_ns", "score_ns", "mask_bytes", "kv_fetch_bytes", "kv_read_bytes", "compute_ns",
        "out_bytes", "cim_macs", "cim_compares", "array_write_bits", "digital_macs", "digital_exps",
        "q_addr", "out_addr", "k_addr", "v_addr", "msb_addr", "kv_span_bytes", "kv_fetch_rows", "lookup_ns")
(LAYER, HEAD, QTILE, KTILE, KEPT, QLOAD, QMSB, KMSB_FETCH, KMSB_LOAD, WRITE_NS, SCORE_NS, MASK, KVFETCH, KVREAD,
 COMPUTE_NS, OUT, CIM_MACS, CIM_CMP, WBITS, DMACS, DEXPS, Q_ADDR, OUT_ADDR, K_ADDR, V_ADDR, MSB_ADDR, KV_SPAN,
 KV_ROWS, LOOKUP_NS) = range(len(_ROW))


@dataclass
class SimStats:
    """What the run measured; the report is built from this and the functional result."""
    latency_ns: float
    events: int
    wall_s: float
    placement: Placement
    key_tile: int
    blocks: dict[str, Block] = field(default_factory=dict)
    utilization: dict[str, float] = field(default_factory=dict)
    busy_ns: dict[str, float] = field(default_factory=dict)
    counts: dict[str, dict[str, float]] = field(default_factory=dict)
    link_bytes: dict[str, float] = field(default_factory=dict)
    token_buffer_peak: int = 0
    kv_rows_fetched: float = 0.0  # K/V rows brought from DRAM (for the reuse hit rate)
    # the run's demand table, per chunk; a merged whole-model run keeps it only when asked (a timeline)
    demand: dict[str, np.ndarray] = field(default_factory=dict)
    pairs: int = 1  # CIM/digital pairs; heads go to them round-robin (``pair_of``)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # every block's own result() hook
    tech: dict[str, Any] = field(default_factory=dict)  # the technology table used (name, file, corner)
    kv_lookups: float = 0.0  # row/cache: survivor-buffer or cache-tag lookups (for their hit rate)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)  # blocks' extra statistics (DRAM row buffers)
    layers: int = 1  # timing runs merged into this one (one per layer: soc/shard.py)
    cpu_s: float = 0.0  # CPU time of the timing runs (timing table + event loop) of this process

    def portable(self, keep_demand: bool = False) -> "SimStats":
        """The same statistics without the live blocks (and, unless ``keep_demand``, the demand table): small,
        picklable, for a merge."""
        return dataclasses.replace(self, blocks={}, demand=self.demand if keep_demand else {})


class System:
    """One SoC instance for one workload shape. ``run(chunks)`` may be called once. ``initial_ns``: the clock
    at build (a merged run's blocks stand at its end, so their statistics read the whole run's time)."""

    def __init__(self, cfg: SocConfig, shape: Shape, recorder: Recorder = OFF, initial_ns: float = 0.0) -> None:
        self.cfg = cfg
        self.shape = shape
        self.env = simpy.Environment(initial_time=initial_ns)
        self.recorder = recorder
        self.waiting: dict[str, str] = {}
        self._build()
        self._elaborate()

    # --- build & elaborate ---------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, env, rec = self.cfg, self.env, self.recorder
        make = hwbase.block_class
        self.pairs = cfg.cim.count
        self.cims = [make("cim", cfg.cim.kind)(env, f"cim{i}", cfg.cim, rec) for i in range(self.pairs)] \
            if cfg.cim.enabled else []
        self.digitals = [make("digital", cfg.digital.kind)(env, f"digital{i}", cfg.digital, rec)
                         for i in range(self.pairs)]
        self.buffers = [make("token_buffer", cfg.token_buffer.kind)(env, f"token_buffer{i}", cfg.token_buffer, rec)
                        for i in range(self.pairs)]
        # without a CIM core nothing passes through the token buffer: the feed hands tiles to the fetch stage
        # through the digital side's own job queue (same depth), and the buffer stays idle (0% utilization)
        self.job_queues = [] if cfg.cim.enabled else [Fifo(env, max(1, cfg.token_buffer.depth_entries))
                                                      for _ in range(self.pairs)]
        self.sram = make("sram", cfg.sram.kind)(env, "sram", cfg.sram, rec)
        self.dram = make("dram", cfg.dram.kind)(env, "dram", cfg.dram, rec)
        self.net = make("interconnect", cfg.interconnect.kind)(env, "interconnect", resolve_interconnect(cfg), rec)
        self.blocks: dict[str, Block] = {b.name: b for b in (*self.cims, *self.digitals, *self.buffers,
                                                               self.sram, self.dram)}
        self.memories = {"sram": self.sram, "dram": self.dram}
        self.tech = tech_of(cfg)
        for block in (*self.blocks.values(), self.net):
            block.tech = self.tech
            block.cost_sheet()  # a bad or missing table entry fails here, before any work

    def _elaborate(self) -> None:
        if self.cfg.token_buffer.depth_entries < 1:
            raise WiringError("token_buffer.depth_entries: expected an integer >= 1 (a buffer of 0 entries can "
                              "never pass a tile from the CIM core to the digital processor), got "
                              f"{self.cfg.token_buffer.depth_entries}")
        # a disabled CIM core is still on the die (and in the graph); it just never runs
        placed = {b.name for b in (*self.digitals, self.sram, self.dram)} | {f"cim{i}" for i in range(self.pairs)}
        self.net.check_nodes(placed)
        needed = []
        for i in range(self.pairs):
            d = f"digital{i}"
            needed += [("dram", "sram"), ("sram", d), (d, "sram"), ("sram", "dram")]
            if self.cims:
                c = f"cim{i}"
                needed += [("sram", c), ("dram", c), (c, d)]
        for src, dst in needed:
            self.net.add_route(src, dst)
        self.key_tile = key_tile_keys(self.cfg, self.shape.head_dim)
        self.placement = kv_placement(self.cfg, self.shape)
        self.address_map = AddressMap.build(self.cfg, self.shape, self.shape.kv_heads)
        # transfer spans carry their byte count only when some timeline track listens
        self._move_args = self.recorder.sink is not None

    # --- transfers -----------------------------------------------------------------------------------------
    def _route_jobs(self, src: str, dst: str, nbytes: float, where: tuple[MemAccess, ...] | None = None) -> list:
        """Everything a transfer occupies: the links of its route and the memories at its ends. ``where``
        gives the DRAM addresses (the SRAM interleaves by its own cursor)."""
        jobs = self.net.transfer(src, dst, nbytes)
        if src in self.memories:
            jobs += self.memories[src].access(nbytes, write=False, where=where)
        if dst in self.memories:
            jobs += self.memories[dst].access(nbytes, write=True, where=where)
        return jobs

    def _move(self, src: str, dst: str, nbytes: float, label: str, where: tuple[MemAccess, ...] | None = None,
              r: tuple | None = None):
        yield from hold(self.env, self._route_jobs(src, dst, nbytes, where), label,
                        self._args(r, nbytes) if self._move_args else None)

    @staticmethod
    def _args(r: tuple | None, nbytes: float | None = None) -> dict:
        """Span arguments (only built when a timeline listens): the tile and the bytes moved."""
        args: dict = {} if r is None else {"layer": r[LAYER], "head": r[HEAD], "qtile": r[QTILE],
                                            "ktile": r[KTILE], "kept": r[KEPT]}
        if nbytes is not None:
            args["bytes"] = nbytes
        return args

    # --- stages --------------------------------------------------------------------------------------------
    def _cim_load_stage(self, i: int, rows: Iterator[tuple], inputs: Fifo):
        """Prefetches each tile's query tile and key MSBs into SRAM while the array works on earlier tiles."""
        me = f"cim{i}.loader"
        for r in rows:
            if r[QLOAD]:
                self.waiting[me] = "query tile load (dram -> sram)"
                yield from self._move("dram", "sram", r[QLOAD], "q_load", (MemAccess(r[Q_ADDR], r[QLOAD]),), r)
                # the query MSBs go to the array's double-buffered input register
                yield from self._move("sram", f"cim{i}", r[QMSB], "q_msb", None, r)
            if r[KMSB_FETCH]:
                self.waiting[me] = "key MSB fetch (dram -> sram)"
                yield from self._move("dram", "sram", r[KMSB_FETCH], "k_msb_fetch",
                                      (MemAccess(r[MSB_ADDR], r[KMSB_FETCH]),), r)
            self.waiting[me] = f"cim{i} input buffer (full)"
            yield from inputs.put(r)
        self.waiting.pop(me, None)

    def _cim_stage(self, i: int, n: int, inputs: Fifo):
        env, cim, tb = self.env, self.cims[i], self.buffers[i]
        name, dig = cim.name, f"digital{i}"
        array = cim.array
        msb_src = "sram" if self.placement.msb_on_chip else "dram"
        for _ in range(n):
            self.waiting[name] = f"cim{i} input buffer (empty)"
            r = yield from inputs.get()
            if r[KMSB_LOAD]:
                # the key tile streams from memory straight into the array rows as they are written
                self.waiting[name] = f"key tile load ({msb_src} -> array)"
                yield from hold(env, self._route_jobs(msb_src, name, r[KMSB_LOAD], (MemAccess(r[MSB_ADDR], r[KMSB_LOAD]),))
                                + [(array, r[WRITE_NS])], "array_write",
                                self._args(r, r[KMSB_LOAD]) if self._move_args else None)
            # the comparators' keep bits leave for the digital side while the array scores
            self.waiting[name] = "the array"
            yield from hold(env, [(array, r[SCORE_NS])] + self.net.transfer(name, dig, r[MASK]), "score",
                            self._args(r, r[MASK]) if self._move_args else None)
            cim.record_chunk(r[CIM_MACS], r[CIM_CMP], r[WBITS])
            self.waiting[name] = f"token_buffer{i} (full)"
            yield from tb.put(r, r[MASK])
        self.waiting.pop(name, None)

    def _feed_stage(self, i: int, rows: Iterator[tuple]):
        """Without a CIM core every tile goes straight to the digital side."""
        jobs, me = self.job_queues[i], f"feed{i}"
        for r in rows:
            if r[QLOAD]:
                self.waiting[me] = "query tile load (dram -> sram)"
                yield from self._move("dram", "sram", r[QLOAD], "q_load", (MemAccess(r[Q_ADDR], r[QLOAD]),), r)
            self.waiting[me] = f"digital{i} job queue (full)"
            yield from jobs.put(r)
        self.waiting.pop(me, None)

    def _fetch_stage(self, i: int, n: int, ready: Fifo):
        tb, me = (self.buffers[i] if self.cims else self.job_queues[i]), f"fetch{i}"
        wait = f"token_buffer{i} (empty)" if self.cims else f"digital{i} job queue (empty)"
        for _ in range(n):
            self.waiting[me] = wait
            r = yield from tb.get()
            if r[LOOKUP_NS]:
                # row/cache: which kept rows are already on chip (survivor buffer or cache tags)
                self.waiting[me] = "survivor lookups"
                yield self.env.timeout(r[LOOKUP_NS])
            if r[KVFETCH]:
                self.waiting[me] = "K/V fetch (dram -> sram)"
                # the kept rows of K and of V: pieces spread over the key tile in each region
                half, rows = r[KVFETCH] / 2, int(r[KV_ROWS])
                yield from self._move("dram", "sram", r[KVFETCH], "kv_fetch",
                                      (MemAccess(r[K_ADDR], half, rows, r[KV_SPAN]),
                                       MemAccess(r[V_ADDR], half, rows, r[KV_SPAN])), r)
            self.waiting[me] = f"K/V buffer of digital{i} (full)"
            yield from ready.put(r)
        self.waiting.pop(me, None)

    def _digital_stage(self, i: int, n: int, ready: Fifo):
        env, dig = self.env, self.digitals[i]
        name, macs = dig.name, dig.macs
        bar = self._progress
        for done in range(1, n + 1):
            if not done & 4095:  # a progress step per 4,096 tiles: no cost per tile worth measuring
                bar.advance(4096)
            self.waiting[name] = "K/V buffer (empty)"
            r = yield from ready.get()
            # operands stream from SRAM into the MAC array while it computes
            self.waiting[name] = "SRAM banks, link and MAC array"
            yield from hold(env, self._route_jobs("sram", name, r[KVREAD]) + [(macs, r[COMPUTE_NS])], "attend",
                            self._args(r, r[KVREAD]) if self._move_args else None)
            dig.record_job(r[DMACS], r[DEXPS])
            if r[OUT]:
                self.waiting[name] = "output write-back"
                yield from self._move(name, "sram", r[OUT], "out", None, r)
                yield from self._move("sram", "dram", r[OUT], "out_writeback", (MemAccess(r[OUT_ADDR], r[OUT]),), r)
        self.waiting.pop(name, None)

    # --- run -----------------------------------------------------------------------------------------------
    def timing_table(self, chunks: dict[str, np.ndarray],
                     survivors: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Demand plus the blocks' durations, per chunk (vectorized, before the event loop)."""
        d = demand(chunks, self.cfg, self.shape, self.placement, survivors)
        d["lookup_ns"] = d["kv_lookups"] / (self.cfg.dataflow.lookups_per_cycle * self.cfg.digital.clock_ghz)
        hd = self.shape.head_dim
        if self.cims:
            cim = self.cims[0]
            for c in self.cims:
                c.set_head_dim(hd)
            d["write_ns"] = cim.write_ns(d["array_loads"] * chunks["k_cols"], hd)
            d["score_ns"] = cim.score_ns(chunks["q_rows"], chunks["k_cols"], d["rule_code"], d["tiles_per_head"])
        else:
            d["write_ns"] = d["score_ns"] = np.zeros(len(chunks["layer"]))
        d["compute_ns"] = self.digitals[0].compute_ns(chunks["pairs_kept"], chunks["rows_kept"], hd)
        d.update(addresses(chunks, self.cfg, self.shape, self.shape.kv_heads, self.address_map))
        return d

    def _append_stage(self, appends: tuple[tuple[str, str, float, str], ...]):
        """Writes outside the tile walk (a decode step's new K/V row and key MSBs), contending for the same
        links and memories as the walk."""
        for src, dst, nbytes, label in appends:
            self.waiting["append"] = f"{label} ({src} -> {dst})"
            yield from self._move(src, dst, nbytes, label)
        self.waiting.pop("append", None)

    def run(self, chunks: dict[str, np.ndarray], appends: tuple[tuple[str, str, float, str], ...] = (),
            survivors: dict[str, np.ndarray] | None = None, bar: progress.Task | None = None) -> SimStats:
        """Walk the tiles of ``chunks``; ``appends`` are (src, dst, bytes, label) transfers run alongside;
        ``survivors``: FunctionalResult.survivors of the chunks' layers (needed by the row and cache dataflows).
        ``bar``: a progress task the caller advances (else the run opens its own, in tiles)."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        table = self.timing_table(chunks, survivors)
        self._demand = table
        self._kv_rows_fetched = float(table["kv_fetch_rows"].sum())
        self._kv_lookups = float(table["kv_lookups"].sum())
        cols = [np.asarray(chunks[k] if k in chunks else table[k]) for k in _ROW]
        owner = pair_of(chunks, self.shape.heads, self.pairs, self.shape.kv_heads)
        procs = []
        idx_all = chunks["layer"]
        for i in range(self.pairs):
            idx = np.flatnonzero(owner == i)
            mine = _rows(cols, idx)
            ready = Fifo(self.env, 2)
            if self.cims:
                inputs = Fifo(self.env, 2)  # double-buffered query/key-MSB inputs
                procs.append(self.env.process(self._cim_load_stage(i, mine, inputs)))
                procs.append(self.env.process(self._cim_stage(i, len(idx), inputs)))
            else:
                procs.append(self.env.process(self._feed_stage(i, mine)))
            procs.append(self.env.process(self._fetch_stage(i, len(idx), ready)))
            procs.append(self.env.process(self._digital_stage(i, len(idx), ready)))
        if appends:
            procs.append(self.env.process(self._append_stage(tuple(appends))))
        if bar is not None:
            self._progress = progress.Task()  # the caller's bar moves per layer
            self.env.run()
        else:
            with progress.task("event loop", total=len(idx_all), unit="tile") as self._progress:
                self.env.run()
        if any(p.is_alive for p in procs):
            blocked = "; ".join(f"{k} waits for {v}" for k, v in sorted(self.waiting.items()))
            raise SimulationStalled(f"simulation stalled at t={self.env.now:.1f} ns with work left: {blocked}")
        stats = self._collect(time.perf_counter() - wall0)
        stats.cpu_s = time.process_time() - cpu0
        return stats

    def _collect(self, wall_s: float) -> SimStats:
        end = self.env.now
        stats = SimStats(latency_ns=end, events=_events(self.env), wall_s=wall_s, placement=self.placement,
                         key_tile=self.key_tile, blocks=dict(self.blocks))
        for name, block in self.blocks.items():
            busy = block.busy_ns()
            stats.busy_ns[name] = busy
            stats.utilization[name] = busy / end if end > 0 else 0.0
            stats.counts[name] = dict(block.counts)
        for block in (*self.blocks.values(), self.net):  # and every port on its own track
            for port in block.ports:
                stats.busy_ns.setdefault(port.name, port.busy_ns)
        stats.utilization.update({f"link {k}": v for k, v in self.net.link_utilization(end).items()})
        stats.link_bytes = {f"{u}->{v}": b for (u, v), b in self.net.link_bytes.items()}
        stats.token_buffer_peak = max(b.peak for b in self.buffers)
        stats.kv_rows_fetched = self._kv_rows_fetched
        stats.kv_lookups = self._kv_lookups
        stats.blocks["interconnect"] = self.net
        stats.demand = self._demand
        stats.pairs = self.pairs
        stats.results = {name: block.result() for name, block in stats.blocks.items()}
        stats.results["other"] = unmodelled(self.cfg, self.tech, sum(r["area_mm2"] for r in stats.results.values()))
        stats.tech = self.tech.describe()
        stats.memory = {name: b.extra_report() for name, b in stats.blocks.items() if hasattr(b, "extra_report")}
        return stats


def cost_probe(cfg: SocConfig, section: str) -> Block:
    """A block of ``section`` outside any run, to read its cost rule (its sheet, ``energy_pj``, area, static
    power): what ``soc paper`` calibrates through."""
    section_cfg = getattr(cfg, section)
    block = hwbase.block_class(section, section_cfg.kind)(simpy.Environment(), f"{section}0", section_cfg, OFF)
    block.tech = tech_of(cfg)
    return block


def pair_of(chunks: dict[str, np.ndarray], heads: int, pairs: int, kv_heads: int | None = None) -> np.ndarray:
    """The CIM/digital pair that runs each chunk: KV heads round-robin over the pairs, so a GQA group's query
    heads run in sequence on one pair and share its K/V."""
    kv_heads = kv_heads or heads
    group = heads // kv_heads
    kv_head = chunks["kv_head"] if "kv_head" in chunks else chunks["head"] // group
    return pair_of_kv_head(chunks["layer"], kv_head, kv_heads, pairs)


def _rows(cols: list[np.ndarray], idx: np.ndarray, block: int = 4096) -> Iterator[tuple]:
    """The tiles of one pair as tuples, made a block at a time: the run holds numpy columns (~0.2 KB a tile),
    not a Python tuple per tile (~1.3 KB)."""
    for start in range(0, len(idx), block):
        sel = idx[start:start + block]
        yield from zip(*(c[sel].tolist() for c in cols))


def _events(env: simpy.Environment) -> int:
    """Events scheduled so far (SimPy numbers every scheduled event)."""
    eid: Any = getattr(env, "_eid", None)
    if eid is None:
        return 0
    return int(next(eid))


def tile_events(stats: SimStats, chunks: dict[str, np.ndarray], heads: int, kv_heads: int | None = None
                ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Every block group's events per chunk, in the block's own counter names, split into the CIM side (query
    and key loads, scoring, the keep bitmap) and the digital side (K/V fetch, compute, output): what the stages
    above count, tile by tile, from the run's demand table. Summed over chunks they are the blocks' counters
    (the timeline books energy with them; tests hold the two equal)."""
    d, on_chip = stats.demand, stats.placement.msb_on_chip
    zero = np.zeros(len(chunks["layer"]))
    msb_dram = d["kmsb_fetch_bytes"] + (zero if on_chip else d["kmsb_load_bytes"])
    msb_sram = d["kmsb_load_bytes"] if on_chip else zero
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "cim": ({"macs": d["cim_macs"], "compares": d["cim_compares"], "write_bits": d["array_write_bits"]}, {}),
        "token_buffer": ({"bytes": d["mask_bytes"]}, {}),
        "digital": ({}, {"macs": d["digital_macs"], "exps": d["digital_exps"]}),
        "dram": ({"read_bytes": d["q_load_bytes"] + msb_dram},
                 {"read_bytes": d["kv_fetch_bytes"], "write_bytes": d["out_bytes"]}),
        "sram": ({"write_bytes": d["q_load_bytes"] + d["kmsb_fetch_bytes"], "read_bytes": d["q_msb_bytes"] + msb_sram},
                 {"write_bytes": d["kv_fetch_bytes"] + d["out_bytes"], "read_bytes": d["kv_read_bytes"] + d["out_bytes"]}),
    }
    # links: the bytes of every transfer on each hop of its pair's route
    net = stats.blocks["interconnect"]
    pair = pair_of(chunks, heads, stats.pairs, kv_heads).astype(np.int64)
    msb_src = "sram" if on_chip else "dram"
    sides = ([("dram", "sram", d["q_load_bytes"]), ("sram", "cim#", d["q_msb_bytes"]),
              ("dram", "sram", d["kmsb_fetch_bytes"]), (msb_src, "cim#", d["kmsb_load_bytes"]),
              ("cim#", "digital#", d["mask_bytes"])],
             [("dram", "sram", d["kv_fetch_bytes"]), ("sram", "digital#", d["kv_read_bytes"]),
              ("digital#", "sram", d["out_bytes"]), ("sram", "dram", d["out_bytes"])])
    hops: list[dict[Any, np.ndarray]] = [{}, {}]
    for side, transfers in zip(hops, sides):
        for src, dst, nbytes in transfers:
            if not nbytes.any():
                continue
            for i in range(stats.pairs):
                route = net.routes.get((src.replace("#", str(i)), dst.replace("#", str(i))), [])
                mine = np.where(pair == i, nbytes, 0.0)
                for hop in route:
                    side[hop] = side.get(hop, zero) + mine
    out["interconnect"] = (hops[0], hops[1])
    return out
