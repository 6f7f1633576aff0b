"""The layers hold: imports walked from the source (AST), and a new block kind that needs no edit elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import soc
from soc.config import load_config
from soc.hw import base as hwbase
from soc.hw.base import Scorer
from soc.simulate import simulate

ROOT = Path(soc.__file__).parent
FACES = ("soc.faces", "soc.sweep", "soc.timeline.chrome", "soc.timeline.perfetto")
SYSTEM = ("soc.system", "soc.dataflow", "soc.topology", "soc.rules", "soc.shard")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(modules of soc imported anywhere in the module, top-level third-party packages), ignoring the
    ``if TYPE_CHECKING:`` blocks (annotations only, never run)."""
    tree = ast.parse(MODULES[name].read_text())
    inner, outer = set(), set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    (inner if a.name.split(".")[0] == "soc" else outer).add(a.name)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative import
                    pkg = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
                    pkg = pkg[:len(pkg) - child.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                if base.split(".")[0] != "soc":
                    outer.add(base)
                    continue
                for a in child.names:
                    full = f"{base}.{a.name}"
                    inner.add(full if full in MODULES else base)
            visit(child)

    visit(tree)
    inner = {m for m in inner if m in MODULES and m != name}
    return inner, {m.split(".")[0] for m in outer}


GRAPH = nx.DiGraph()
THIRD_PARTY: dict[str, set[str]] = {}
for _name in MODULES:
    _inner, THIRD_PARTY[_name] = _imports(_name)
    GRAPH.add_node(_name)
    GRAPH.add_edges_from((_name, m) for m in _inner)


def _block_modules() -> set[str]:
    """Modules under soc.hw that register a block kind (helpers such as DRAM presets are not blocks)."""
    def registers(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for d in node.decorator_list:
                    if isinstance(d, ast.Call) and getattr(d.func, "id", getattr(d.func, "attr", "")) == "register":
                        return True
        return False

    return {n for n, p in MODULES.items() if n.startswith("soc.hw.") and registers(p)}


def _is(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_the_package():
    assert {"soc.system", "soc.hw.cim", "soc.faces.report", "soc.attention.functional"} <= set(GRAPH)
    assert ("soc.system", "soc.dataflow") in GRAPH.edges  # a known import is found
    assert {"soc.hw.cim", "soc.hw.digital", "soc.hw.predictor", "soc.hw.memory"} <= _block_modules()


def test_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(GRAPH) if len(c) > 1]
    assert not cycles, cycles


def test_no_block_imports_another_block():
    blocks = _block_modules()
    bad = [(a, b) for a, b in GRAPH.edges if a in blocks and b in blocks]
    assert not bad, bad


def test_functional_layer_imports_no_simpy_hardware_or_system():
    for name in (n for n in GRAPH if n.startswith("soc.attention")):
        reach = nx.descendants(GRAPH, name) | {name}
        assert not [m for m in reach if _is(m, ("soc.hw", "soc.system", "soc.simulate"))], name
        assert not [m for m in reach if "simpy" in THIRD_PARTY[m]], name


def test_no_face_imported_by_the_system_or_a_block():
    for name in (n for n in GRAPH if _is(n, SYSTEM) or n.startswith("soc.hw")):
        faces = [m for m in nx.descendants(GRAPH, name) if _is(m, FACES)]
        assert not faces, (name, faces)


# --- a new block kind: its own class and one registry line ------------------------------------------------
TOY_CYCLES = 13  # per query, whatever the keys: distinct from the analog array's query_bits + compare_cycles


class ToyScorer(Scorer):
    """A second scorer: a fixed number of cycles per query and a flat 1 pJ per comparator decision."""

    def base_cycles_per_query(self, k_cols):
        return np.full(np.shape(k_cols), float(TOY_CYCLES))

    def energy_pj(self, counts):
        return {"compare": counts.get("compares", 0.0) * 1.0}


@pytest.fixture
def toy_kind():
    hwbase.register("cim", "toy_scorer")(ToyScorer)  # the one registry line
    yield "toy_scorer"
    del hwbase._REGISTRY[("cim", "toy_scorer")]


def test_a_toy_scorer_registered_here_runs_end_to_end(toy_kind, small_trace):
    base = simulate(load_config("configs/hybrid65nm.yaml"), small_trace, model_accuracy=False)
    toy = simulate(load_config("configs/hybrid65nm.yaml", [f"cim.kind={toy_kind}"]), small_trace,
                   model_accuracy=False)
    cfg = base.config.cim
    rows = float(base.functional.chunks["q_rows"].sum())  # every chunk scores its rows once (threshold rule)
    want = rows * (TOY_CYCLES - (cfg.query_bits + cfg.compare_cycles)) / cfg.clock_ghz
    busy = {r: res.stats.busy_ns["cim0"] for r, res in (("base", base), ("toy", toy))}
    assert busy["toy"] - busy["base"] == pytest.approx(want, rel=1e-9)
    # its cost rule is the one the report uses; the functional result does not depend on the scorer's timing
    assert toy.report["energy"]["detail"]["cim"]["compare"] == pytest.approx(
        toy.report["energy"]["counts"]["cim0"]["compares"] * 1e-12)
    assert toy.report["pruning"]["kept_fraction"] == base.report["pruning"]["kept_fraction"]


def test_an_unregistered_kind_is_a_config_error_naming_the_registered_ones():
    from soc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cim.kind: expected one of charge_cim, digital_predictor"):
        load_config("configs/hybrid65nm.yaml", ["cim.kind=toy_scorer"])


# --- the Result: assembled once by simulate, read by the report -------------------------------------------
def test_the_result_carries_its_pieces_and_the_report_is_built_once(paper_cfg, small_trace):
    res = simulate(paper_cfg, small_trace, model_accuracy=False)
    assert res.report is res.report  # built on first use, never rebuilt or edited
    assert res.error is None and res.end_ns == res.report["time"]["latency_ns"]
    assert set(res.stats.results) >= {"cim0", "digital0", "sram", "dram", "interconnect", "other"}
    # the demand table of the run is the one the counters followed; the dense one is its counterfactual
    assert res.demand["digital_macs"].sum() == res.stats.results["digital0"]["counts"]["macs"]
    from soc.dataflow import demand, traffic_totals
    from soc.simulate import dense_config

    # the dense baseline (counted from the validity mask, once, in the Result) equals the demand rule applied
    # to the no-pruning chunk table
    table = demand(res.functional.dense_chunks, dense_config(res.config), res.shape, res.stats.placement)
    assert res.report["traffic"]["dense"] == res.dense_traffic
    for key, value in traffic_totals(table, res.stats.placement).items():
        assert res.dense_traffic[key] == pytest.approx(value, rel=1e-12), key


def test_a_failed_run_hands_its_partial_result_with_the_exception(paper_cfg, small_trace, monkeypatch):
    from soc.errors import SimulationStalled
    from soc.system import System

    original = System._fetch_stage

    def broken_fetch(self, i, n, ready):
        yield from original(self, i, n - 1, ready)  # loses the last tile

    monkeypatch.setattr(System, "_fetch_stage", broken_fetch)
    with pytest.raises(SimulationStalled) as info:
        simulate(paper_cfg, small_trace, model_accuracy=False)
    res = info.value.result
    assert res.error is info.value and res.stats is None and res.config == paper_cfg
    assert res.functional.chunks["layer"].size > 0 and res.wall_s > 0
