"""The on-chip interconnect: a networkx graph whose nodes are block instances and whose edges are links.

Every link carries one port per direction (full duplex), with bandwidth, latency and energy per byte. Routes
(fewest-latency paths) are computed once at elaboration for every pair the dataflow uses; a transfer then
occupies the ports of its route, each for ``latency_ns + bytes / bandwidth``.

Cost law: a link's energy per byte = 8 x [wire_pj_per_bit_mm] x length_mm (unless pj_per_byte is given); wires
run over the blocks (no area) and do not leak.
"""

from __future__ import annotations

from typing import Any, Mapping

import networkx as nx

from soc.errors import WiringError
from soc.hw.base import Network, Port, register
from soc.tech import cost


@register("interconnect", "graph")
class Interconnect(Network):
    claim_rank = 1
    def __init__(self, env, name, cfg, recorder) -> None:
        super().__init__(env, name, cfg, recorder)
        self.graph = nx.Graph()
        self.link_ports: dict[tuple[str, str], Port] = {}
        self.link_bytes: dict[tuple[str, str], float] = {}
        self.routers = frozenset(cfg.routers)
        medium_of = {i: m for m, idxs in cfg.shared.items() for i in idxs}
        media: dict[str, Port] = {}
        for i, link in enumerate(cfg.links):
            if link.a == link.b:
                raise WiringError(f"interconnect.links[{i}]: a link needs two different ends, got {link.a!r} twice")
            if self.graph.has_edge(link.a, link.b):
                raise WiringError(f"interconnect.links[{i}]: duplicate link {link.a} <-> {link.b}")
            self.graph.add_edge(link.a, link.b, cfg=link)
            medium = medium_of.get(i)
            for u, v in ((link.a, link.b), (link.b, link.a)):
                # links of one shared medium (a bus) share one port in both directions
                if medium is None:
                    self.link_ports[(u, v)] = self.port(f"{u}->{v}")
                else:
                    if medium not in media:
                        media[medium] = self.port(medium)
                    self.link_ports[(u, v)] = media[medium]
                self.link_bytes[(u, v)] = 0.0
        self.routes: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._resolved: dict[tuple[str, str], tuple[float, tuple[tuple[Port, float], ...], tuple]] = {}

    def check_nodes(self, blocks: set[str]) -> None:
        unknown = set(self.graph.nodes) - blocks - self.routers
        if unknown:
            raise WiringError(f"interconnect.links: unknown block(s) {', '.join(sorted(unknown))} "
                              f"(blocks: {', '.join(sorted(blocks))})")

    def add_route(self, src: str, dst: str) -> None:
        """Precompute the route src -> dst; a missing one is a wiring error naming both ends."""
        if src not in self.graph or dst not in self.graph:
            missing = src if src not in self.graph else dst
            raise WiringError(f"interconnect: block {missing!r} has no link; the dataflow needs a route "
                              f"{src} -> {dst}")
        try:
            path = nx.shortest_path(self.graph, src, dst, weight=lambda u, v, d: d["cfg"].latency_ns + 1e-9)
        except nx.NetworkXNoPath:
            raise WiringError(f"interconnect: no route {src} -> {dst}; add a link path between them") from None
        hops = list(zip(path[:-1], path[1:]))
        self.routes[(src, dst)] = hops
        lat = sum(self.graph.edges[h]["cfg"].latency_ns for h in hops)
        # resolved once: each port of the route with its slowest hop's bandwidth (a route over one shared
        # medium twice holds it once), so a transfer reads a tuple, not the graph's edge dicts
        slowest: dict[Port, float] = {}
        for h in hops:
            port, bw = self.link_ports[h], self.graph.edges[h]["cfg"].bandwidth_gb_per_s
            slowest[port] = min(slowest.get(port, bw), bw)
        self._resolved[(src, dst)] = (lat, tuple(slowest.items()), tuple(hops))

    def transfer(self, src: str, dst: str, nbytes: float) -> list[tuple[Port, float]]:
        """Every hop is held from the start: the head crosses the route's hops (their latencies add) and the
        body streams through each at its bandwidth; a route over one shared medium twice holds it once."""
        lat, ports, hops = self._resolved[(src, dst)]
        link_bytes = self.link_bytes
        for hop in hops:
            link_bytes[hop] += nbytes
        return [(port, lat + nbytes / bw) for port, bw in ports]

    def link_utilization(self, end_ns: float) -> dict[str, float]:
        ports = dict.fromkeys(self.link_ports.values())  # a shared medium's port once, in link order
        return {p.name: (p.busy_ns / end_ns if end_ns > 0 else 0.0) for p in ports}

    @classmethod
    def cost_rule(cls, cfg, tech) -> dict[str, dict[str, Any]]:
        sheet = {"area_mm2": cost(None, 0.0, "wires over the blocks", "mm2"),
                 "static_mw": cost(None, 0.0, "wires do not leak", "mW")}
        for link in cfg.links:
            sheet[f"{link.a}<->{link.b}.pj_per_byte"] = cost(
                link.pj_per_byte, 8 * tech["wire_pj_per_bit_mm"] * link.length_mm,
                f"8 bits x {tech['wire_pj_per_bit_mm']:g} pJ/bit/mm x {link.length_mm:g} mm", "pJ")
        return sheet

    def hop_pj_per_byte(self, hop: tuple[str, str]) -> float:
        link = self.graph.edges[hop]["cfg"]
        return self.cost_value(f"{link.a}<->{link.b}.pj_per_byte")

    def energy_pj(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        """``counts``: bytes per hop ``(u, v)`` (a link direction)."""
        total = sum(b * self.hop_pj_per_byte(hop) for hop, b in counts.items())
        return {"links": total}

    def dynamic_energy_pj(self) -> dict[str, float]:
        return self.energy_pj(self.link_bytes)

    def result(self) -> dict[str, Any]:
        return {**super().result(), "link_bytes": {f"{u}->{v}": b for (u, v), b in self.link_bytes.items()}}

