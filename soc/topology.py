"""On-chip interconnect topologies as link lists: a shared bus, a crossbar and a 2D mesh of routers.

The interconnect block routes transfers over a networkx graph whose nodes are blocks (``dram``, ``sram``,
``cimN``, ``digitalN``) and, here, switch nodes; every link has one port per direction, so two transfers
contend exactly when their routes share a link direction. The generators only write that graph down:

- ``bus``: one half-duplex shared medium. Every pair of blocks gets a direct link and all links share one
  port (``shared: {bus: [...]}``), so any transfer holds the whole bus: total bandwidth = the bus bandwidth.
  The memory controller (``dram``) is a bus agent like the others.
- ``crossbar``: a switch node ``xbar`` with one full-duplex port per block. Transfers with different sources
  and different destinations proceed in parallel; two transfers to (or from) one block serialize on its port.
- ``mesh``: a ``cols`` x ``rows`` grid of routers ``r{x}_{y}``, one block per router (row-major: dram, sram,
  cim0, digital0, cim1, digital1, ...), neighbour links in both dimensions; routes are minimal (fewest-latency
  paths, ties broken by networkx), so the links near ``sram`` and ``dram`` carry the most traffic.

The off-chip memory port of crossbar and mesh uses the ``dram_link_*`` parameters; every other link the
``link_*`` ones. ``resolve_interconnect(cfg)`` returns the InterconnectConfig the system builds: the explicit
one unchanged, else a generated one with ``topology: explicit``.
"""
from __future__ import annotations

import dataclasses
import math

import networkx as nx

from soc.config.schema import InterconnectConfig, LinkConfig, SocConfig
from soc.errors import ConfigError


def block_names(pairs: int) -> list[str]:
    """The blocks a topology connects: memories first, then each CIM core beside its digital processor (a
    disabled CIM core is still on the die and in the graph)."""
    names = ["dram", "sram"]
    for i in range(pairs):
        names += [f"cim{i}", f"digital{i}"]
    return names


def _link(a: str, b: str, icfg: InterconnectConfig, offchip: bool = False) -> LinkConfig:
    if offchip:
        return LinkConfig(a, b, icfg.dram_link_bandwidth_gb_per_s, icfg.dram_link_latency_ns,
                          icfg.dram_link_pj_per_byte)
    return LinkConfig(a, b, icfg.link_bandwidth_gb_per_s, icfg.link_latency_ns, icfg.link_pj_per_byte)


def bus(blocks: list[str], icfg: InterconnectConfig) -> InterconnectConfig:
    links = tuple(_link(a, b, icfg) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    return dataclasses.replace(icfg, topology="explicit", links=links, routers=(),
                               shared={"bus": tuple(range(len(links)))})


def crossbar(blocks: list[str], icfg: InterconnectConfig) -> InterconnectConfig:
    links = tuple(_link(b, "xbar", icfg, offchip=b == "dram") for b in blocks)
    return dataclasses.replace(icfg, topology="explicit", links=links, routers=("xbar",), shared={})


def mesh_shape(n: int, cols: int | None) -> tuple[int, int]:
    """(cols, rows) of the smallest grid with ``cols`` columns (default ceil(sqrt(n))) holding n blocks."""
    cols = cols or math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


def router(x: int, y: int) -> str:
    return f"r{x}_{y}"


def mesh(blocks: list[str], icfg: InterconnectConfig) -> InterconnectConfig:
    cols, rows = mesh_shape(len(blocks), icfg.mesh_cols)
    routers = tuple(router(x, y) for y in range(rows) for x in range(cols))
    links = [_link(b, router(i % cols, i // cols), icfg, offchip=b == "dram") for i, b in enumerate(blocks)]
    for y in range(rows):
        for x in range(cols):
            if x + 1 < cols:
                links.append(_link(router(x, y), router(x + 1, y), icfg))
            if y + 1 < rows:
                links.append(_link(router(x, y), router(x, y + 1), icfg))
    return dataclasses.replace(icfg, topology="explicit", links=tuple(links), routers=routers, shared={})


GENERATORS = {"bus": bus, "crossbar": crossbar, "mesh": mesh}


def resolve_interconnect(cfg: SocConfig) -> InterconnectConfig:
    """The interconnect the system builds for ``cfg``: generated unless ``topology`` is explicit."""
    icfg = cfg.interconnect
    if icfg.topology == "explicit":
        return icfg
    gen = GENERATORS.get(icfg.topology)
    if gen is None:
        raise ConfigError(f"interconnect.topology: expected one of explicit, {', '.join(GENERATORS)}, "
                          f"got {icfg.topology!r}")
    return gen(block_names(cfg.cim.count), icfg)


def graph(icfg: InterconnectConfig) -> nx.Graph:
    """The undirected link graph of an (explicit) interconnect config, edges carrying their LinkConfig."""
    g = nx.Graph()
    for link in icfg.links:
        g.add_edge(link.a, link.b, cfg=link)
    return g
