"""Stalls: a SoC that cannot make progress is refused when it is built; a run that deadlocks says who waits.

Build-time refusals (``WiringError`` from ``System``, before any functional or timing work), one per way a
dataflow can be impossible: a token buffer of 0 entries, a block without a link, a route that does not exist,
links to unknown blocks or to themselves, a key wider than the CIM array, SRAM too small for one tile (or for a
resident head). Each also through the CLI: exit 2, exactly the library's message on one stderr line.

Run-time stalls (``SimulationStalled``): a stage that never delivers its last item to a store, a token buffer
that loses its entries, a DRAM channel that is never released. The event queue empties with work left; the
error names every blocked process and what it waits for, and the run ends at once instead of hanging.
"""

from __future__ import annotations

import importlib
import re
import time
from pathlib import Path

import pytest

from soc.config import load_config
from soc.errors import SimulationStalled, WiringError
from soc.hw.base import Port
from soc.hw.token_buffer import TokenBuffer
from soc.simulate import shape_of, simulate
from soc.system import System
from soc.trace import load_trace
from soc.faces.cli import _hint, config_name
from support import cli_one_line as cli_error

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "traces" / "synth-tiny.npz"  # 2 layers x 12 heads, seq 64, head_dim 32: 48 tiles
PAPER = ROOT / "configs" / "hybrid65nm.yaml"
DENSE = ROOT / "configs" / "dense-digital.yaml"


@pytest.fixture(scope="module")
def trace():
    return load_trace(TRACE)


def _links(*pairs: tuple[str, str]) -> str:
    return "interconnect:\n  links:\n" + "".join(f"    - {{a: {a}, b: {b}}}\n" for a, b in pairs)


# --------------------------------------------------------------------------------------------- build time
# (label, config file text or None, overrides, message): every way the dataflow can be impossible
REFUSED = [
    ("token buffer of 0 entries", None, ["token_buffer.depth_entries=0"],
     r"token_buffer.depth_entries: expected an integer >= 1 \(a buffer of 0 entries can never pass a tile"),
    ("token buffer of 0 entries, CIM off", f"extends: {DENSE}\n", ["token_buffer.depth_entries=0"],
     r"token_buffer.depth_entries: expected an integer >= 1"),
    ("the CIM core has no link", _links(("dram", "sram"), ("sram", "digital0")), [],
     r"interconnect: block 'cim0' has no link; the dataflow needs a route sram -> cim0"),
    ("a second pair without links", None, ["cim.count=2"],
     r"interconnect: block 'digital1' has no link; the dataflow needs a route sram -> digital1"),
    ("two islands: no route from SRAM to the digital side", _links(("dram", "sram"), ("cim0", "digital0")), [],
     r"interconnect: no route sram -> digital0; add a link path between them"),
    ("a link to an unknown block", _links(("dram", "sram"), ("sram", "digital0"), ("sram", "cim0"),
                                          ("cim0", "digital0"), ("sram", "gpu0")), [],
     r"interconnect.links: unknown block\(s\) gpu0 \(blocks: cim0, digital0, dram, sram\)"),
    ("a link from a block to itself", _links(("dram", "sram"), ("sram", "sram")), [],
     r"interconnect.links\[1\]: a link needs two different ends, got 'sram' twice"),
    ("the same link twice", _links(("dram", "sram"), ("sram", "dram")), [],
     r"interconnect.links\[1\]: duplicate link sram <-> dram"),
    ("a key wider than the CIM array", None, ["cim.array_rows=8", "cim.array_cols=8"],
     r"cim: one key of head_dim 32 x 4 bits needs more than the array's 8 columns of 8 rows"),
    ("SRAM too small for one tile", None, ["sram.banks=1", "sram.bank_bytes=1024"],
     r"sram: 1024 bytes cannot hold one query tile and two key tiles of K/V \(10240 bytes\)"),
]


def _config(tmp_path: Path, text: str | None) -> Path:
    if text is None:
        return PAPER
    path = tmp_path / "soc.yaml"
    path.write_text(text if text.startswith("extends:") else f"extends: {PAPER}\n{text}")
    return path


@pytest.mark.parametrize("label, text, overrides, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_impossible_socs_are_refused_when_built(tmp_path, trace, monkeypatch, label, text, overrides, message):
    path = _config(tmp_path, text)
    cfg = load_config(path, overrides)
    t0 = time.perf_counter()
    with pytest.raises(WiringError, match=message) as info:
        System(cfg, shape_of(trace))  # build + elaborate only: nothing has run
    assert time.perf_counter() - t0 < 1.0
    assert "\n" not in str(info.value)
    # simulate() elaborates before any functional work: a refused SoC costs no attention pass
    sim = importlib.import_module("soc.simulate")  # the module (soc.simulate is also the function)

    def no_functional(*args, **kwargs):
        raise AssertionError("the functional layer ran before elaboration refused the SoC")

    monkeypatch.setattr(sim, "run_functional", no_functional)
    with pytest.raises(WiringError, match=message):
        simulate(cfg, trace)
    out = tmp_path / "out"
    line = cli_error(["run", "--config", str(path), *(f"--set={o}" for o in overrides), "--trace", str(TRACE),
                      "--out", str(out)])
    # the CLI names the config (and overrides) the error came from: blocks know their key, not the file
    named = type(info.value)(f"{config_name(str(path), list(overrides))}: {info.value}")
    assert line == f"soc: error: {_hint(named)}"  # with the topology hint where a link is missing
    assert not (out / "report.json").exists()


def test_sram_too_small_for_a_resident_head(tmp_path, small_trace):
    """seq 256, head_dim 32, int8: a tile needs 2048 (Q in, out) + 2 x 2 x 128 x 32 (K/V double buffer) =
    18432 bytes; a resident head 2048 + 2 x 256 x 32 (K, V) + 256 x 32 x 4 / 8 (key MSBs) = 22528."""
    from soc.trace import save_trace

    over = ["dataflow.kv_placement=resident", "sram.banks=1", "sram.bank_bytes=18432"]
    message = "dataflow.kv_placement: resident needs 22528 bytes of SRAM for one head, have 18432"
    with pytest.raises(WiringError, match=message):
        System(load_config(PAPER, over), shape_of(small_trace))
    assert System(load_config(PAPER, over[:1] + ["sram.banks=1", "sram.bank_bytes=22528"]), shape_of(small_trace))
    assert System(load_config(PAPER, ["dataflow.kv_placement=auto", *over[1:]]), shape_of(small_trace))
    path = save_trace(tmp_path / "t.npz", small_trace.q, small_trace.k, small_trace.v, small_trace.meta)
    line = cli_error(["run", *(f"--set={o}" for o in over), "--trace", str(path), "--out", str(tmp_path)])
    assert line == f"soc: error: {config_name(None, over)}: {message}"


def test_the_working_socs_next_to_the_refused_ones_do_run(tmp_path, trace):
    """The refusals are sharp: one step back from each limit the SoC builds and runs."""
    ok = [(None, ["token_buffer.depth_entries=1"]), (None, ["cim.array_rows=8", "cim.array_cols=16"]),
          (None, ["sram.banks=1", "sram.bank_bytes=10240"]),
          (_links(("dram", "sram"), ("sram", "cim0"), ("cim0", "digital0")), []),  # SRAM reaches digital via cim0
          (None, ["cim.count=2", "interconnect.topology=crossbar"])]
    for text, overrides in ok:
        report = simulate(load_config(_config(tmp_path, text), overrides), trace).report
        assert report["time"]["latency_ns"] > 0 and 0 < report["pruning"]["kept_fraction"] <= 1


# --------------------------------------------------------------------------------------------- run time
def _blocked(message: str) -> dict[str, str]:
    """'... with work left: a waits for x; b waits for y' -> {a: x, b: y}"""
    assert message.startswith("simulation stalled at t="), message
    tail = message.split("with work left: ", 1)[1]
    return dict(part.split(" waits for ", 1) for part in tail.split("; "))


def _drop_last(original):
    """A stage that quietly loses its last tile (the consumer then waits for an item that never comes)."""
    def stage(self, i, rows, *stores):
        yield from original(self, i, list(rows)[:-1], *stores)
    return stage


def test_a_store_that_never_gets_its_last_item(trace, monkeypatch):
    """The CIM loader loses one tile: the array, the fetch stage and the digital side all wait on empty stores."""
    monkeypatch.setattr(System, "_cim_load_stage", _drop_last(System._cim_load_stage))
    t0 = time.perf_counter()
    with pytest.raises(SimulationStalled) as info:
        simulate(load_config(PAPER), trace)
    assert time.perf_counter() - t0 < 30
    assert _blocked(str(info.value)) == {"cim0": "cim0 input buffer (empty)", "fetch0": "token_buffer0 (empty)",
                                         "digital0": "K/V buffer (empty)"}
    stalled_at = float(re.search(r"t=([0-9.]+) ns", str(info.value)).group(1))
    monkeypatch.undo()
    assert 0 < stalled_at <= simulate(load_config(PAPER), trace).report["time"]["latency_ns"]


def test_a_stall_without_the_cim_core(trace, monkeypatch):
    monkeypatch.setattr(System, "_feed_stage", _drop_last(System._feed_stage))
    with pytest.raises(SimulationStalled) as info:
        simulate(load_config(DENSE), trace)
    assert _blocked(str(info.value)) == {"fetch0": "digital0 job queue (empty)", "digital0": "K/V buffer (empty)"}


def test_a_token_buffer_that_loses_entries(trace, monkeypatch):
    """Entries put after the fifth vanish: the CIM side finishes, the consumer side waits forever."""
    original = TokenBuffer.put
    seen = {"n": 0}

    def leaky_put(self, item, entry_bytes):
        seen["n"] += 1
        if seen["n"] > 5:
            yield self.env.timeout(0)  # accepted, but never stored
            return
        yield from original(self, item, entry_bytes)

    monkeypatch.setattr(TokenBuffer, "put", leaky_put)
    with pytest.raises(SimulationStalled) as info:
        simulate(load_config(PAPER), trace)
    assert _blocked(str(info.value)) == {"fetch0": "token_buffer0 (empty)", "digital0": "K/V buffer (empty)"}


def test_a_dram_channel_that_is_never_released(trace, monkeypatch):
    """A resource held forever: everything that needs DRAM queues behind it, and each says so."""
    original = Port.occupy

    def stuck(self, start_ns, duration_ns, label, args):
        if self.name != "dram.ch0":
            original(self, start_ns, duration_ns, label, args)
        # else: the channel works but never frees itself (nor hands itself to a waiter)

    monkeypatch.setattr(Port, "occupy", stuck)
    with pytest.raises(SimulationStalled) as info:
        simulate(load_config(PAPER), trace)
    assert _blocked(str(info.value)) == {"cim0.loader": "key MSB fetch (dram -> sram)",
                                         "cim0": "cim0 input buffer (empty)", "fetch0": "token_buffer0 (empty)",
                                         "digital0": "K/V buffer (empty)"}


def test_a_stall_in_one_pair_names_only_that_pair(trace, monkeypatch):
    original = System._cim_load_stage

    def lose_in_pair_1(self, i, rows, store):
        yield from original(self, i, list(rows)[:-1] if i == 1 else rows, store)

    monkeypatch.setattr(System, "_cim_load_stage", lose_in_pair_1)
    with pytest.raises(SimulationStalled) as info:
        simulate(load_config(PAPER, ["cim.count=2", "interconnect.topology=crossbar"]), trace)
    assert _blocked(str(info.value)) == {"cim1": "cim1 input buffer (empty)", "fetch1": "token_buffer1 (empty)",
                                         "digital1": "K/V buffer (empty)"}


def test_a_stall_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setattr(System, "_cim_load_stage", _drop_last(System._cim_load_stage))
    line = cli_error(["run", "--trace", str(TRACE), "--out", str(tmp_path)])
    assert re.fullmatch(r"soc: error: simulation stalled at t=[0-9.]+ ns with work left: cim0 waits for cim0 "
                        r"input buffer \(empty\); digital0 waits for K/V buffer \(empty\); fetch0 waits for "
                        r"token_buffer0 \(empty\)", line), line
    assert not (tmp_path / "report.json").exists()
