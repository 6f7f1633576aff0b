"""Interconnect topologies: the generated graphs, and several cores contending on them in the SoC."""

from __future__ import annotations

import dataclasses

import networkx as nx
import pytest
import simpy

from soc.config import load_config
from soc.config.loader import package_root
from soc.config.schema import InterconnectConfig
from soc.errors import ConfigError, WiringError
from soc.hw.base import block_class
from soc.recorder import OFF
from soc.topology import block_names, bus, crossbar, graph, mesh, mesh_shape, resolve_interconnect, router

ICFG = InterconnectConfig(link_bandwidth_gb_per_s=20.0, link_latency_ns=1.5, link_pj_per_byte=0.2,
                          dram_link_bandwidth_gb_per_s=10.0, dram_link_latency_ns=4.0,
                          dram_link_pj_per_byte=0.7)


def test_block_names_pair_each_cim_with_its_digital_processor():
    assert block_names(2) == ["dram", "sram", "cim0", "digital0", "cim1", "digital1"]


def test_bus_links_every_pair_and_shares_one_medium():
    blocks = block_names(3)
    net = bus(blocks, ICFG)
    n = len(blocks)
    assert len(net.links) == n * (n - 1) // 2
    assert {frozenset((ln.a, ln.b)) for ln in net.links} == {frozenset((a, b)) for a in blocks for b in blocks
                                                            if a != b}
    assert net.shared == {"bus": tuple(range(len(net.links)))}
    assert all(ln.bandwidth_gb_per_s == 20.0 and ln.latency_ns == 1.5 for ln in net.links)
    assert net.topology == "explicit" and net.routers == ()


def test_crossbar_gives_each_block_one_port_and_two_hop_routes():
    blocks = block_names(2)
    net = crossbar(blocks, ICFG)
    g = graph(net)
    assert net.routers == ("xbar",)
    assert g.degree["xbar"] == len(blocks) and len(net.links) == len(blocks)
    assert g.edges["dram", "xbar"]["cfg"].bandwidth_gb_per_s == 10.0  # the off-chip port
    assert g.edges["sram", "xbar"]["cfg"].bandwidth_gb_per_s == 20.0
    for a in blocks:
        for b in blocks:
            if a != b:
                assert nx.shortest_path_length(g, a, b) == 2


@pytest.mark.parametrize("pairs,cols", [(1, None), (2, None), (4, None), (4, 5), (3, 2)])
def test_mesh_is_a_grid_with_one_block_per_router(pairs, cols):
    blocks = block_names(pairs)
    net = mesh(blocks, dataclasses.replace(ICFG, mesh_cols=cols))
    c, r = mesh_shape(len(blocks), cols)
    assert c * r >= len(blocks) > c * (r - 1)
    g = graph(net)
    assert set(net.routers) == {router(x, y) for x in range(c) for y in range(r)}
    router_links = [ln for ln in net.links if ln.a in net.routers and ln.b in net.routers]
    assert len(router_links) == r * (c - 1) + c * (r - 1)
    assert len(net.links) - len(router_links) == len(blocks)
    assert nx.is_connected(g)
    # a block reaches another in its own router link + Manhattan distance + the other's router link
    place = {b: (i % c, i // c) for i, b in enumerate(blocks)}
    for b in blocks[1:]:
        (x0, y0), (x1, y1) = place["dram"], place[b]
        assert nx.shortest_path_length(g, "dram", b) == 2 + abs(x1 - x0) + abs(y1 - y0)


def test_resolve_keeps_explicit_and_generates_the_rest(tmp_path):
    cfg = load_config("configs/hybrid65nm.yaml")
    assert resolve_interconnect(cfg) is cfg.interconnect
    p = tmp_path / "two.yaml"
    base = package_root() / "configs" / "hybrid65nm.yaml"
    p.write_text(f"extends: {base}\ncim: {{count: 2}}\ninterconnect: {{topology: mesh, mesh_cols: 3}}\n")
    cfg2 = load_config(p)
    net = resolve_interconnect(cfg2)
    assert net.topology == "explicit" and len(net.routers) == 6
    assert {ln.a for ln in net.links if ln.b.startswith("r")} >= set(block_names(2))


def test_unknown_topology_is_a_config_error():
    with pytest.raises(ConfigError, match="interconnect.topology: expected one of explicit, bus, crossbar"):
        load_config("configs/hybrid65nm.yaml", ["interconnect.topology=ring"])


# --- in the SoC: needs an interconnect that accepts router nodes and shared media ---------------------------
def _interconnect_supports_topologies() -> bool:
    net = block_class("interconnect", "graph")(simpy.Environment(), "interconnect",
                                               crossbar(block_names(1), ICFG), OFF)
    try:
        net.check_nodes(set(block_names(1)))
    except WiringError:
        return False
    return True


needs_routing = pytest.mark.skipif(not _interconnect_supports_topologies(),
                                   reason="the interconnect block does not accept router nodes yet")


@pytest.fixture(scope="module")
def two_core_runs(small_trace):
    from soc.simulate import simulate

    out = {}
    for topo in ("bus", "crossbar", "mesh"):
        cfg = load_config("configs/hybrid65nm.yaml", ["cim.count=2", f"interconnect.topology={topo}",
                                                      "interconnect.link_bandwidth_gb_per_s=8.0"])
        out[topo] = simulate(cfg, small_trace)
    return out


@needs_routing
def test_several_cores_share_the_work_on_every_topology(two_core_runs, small_trace):
    for topo, res in two_core_runs.items():
        r = res.report
        counts = res.stats.counts
        # heads are dealt round-robin to the two pairs: both digital processors worked
        assert counts["digital0"]["macs"] > 0 and counts["digital1"]["macs"] > 0, topo
        for name, u in r["utilization_by_instance"].items():
            assert 0.0 <= u <= 1.0 + 1e-12, (topo, name)
        # every byte read from DRAM crossed the memory's own link(s) on its way out
        out_of_dram = sum(b for k, b in r["traffic"]["link_bytes"].items() if k.startswith("dram->"))
        assert out_of_dram == pytest.approx(r["traffic"]["dram_read_bytes"]), topo


@needs_routing
def test_a_bus_serializes_what_a_crossbar_overlaps(two_core_runs):
    bus_r, xbar_r = two_core_runs["bus"].report, two_core_runs["crossbar"].report
    # the bus is one port: its busy time is the sum of every transfer, so it is the most utilized link
    bus_util = bus_r["utilization_by_instance"]["link interconnect.bus"]
    assert bus_util == pytest.approx(bus_r["utilization"]["links"])
    assert bus_r["time"]["busy_ns"]["interconnect.bus"] >= max(
        v for k, v in xbar_r["time"]["busy_ns"].items() if k.startswith("interconnect.") and "xbar" in k)
    assert bus_r["time"]["latency_ns"] >= xbar_r["time"]["latency_ns"]
