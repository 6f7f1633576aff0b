"""The on-chip interconnect: a networkx graph whose nodes are block instances and whose edges are links.

Every link carries one port per direction (full duplex), with bandwidth, latency and energy per byte. Routes
(fewest-latency paths) are computed once at elaboration for every pair the dataflow uses; a transfer then
occupies the ports of its route, each for ``latency_ns + bytes / bandwidth``.
"""

from __future__ import annotations

import networkx as nx

from soc.errors import WiringError
from soc.hw.base import Block, Port, register


@register("interconnect", "graph")
class Interconnect(Block):
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
        self.route_latency_ns: dict[tuple[str, str], float] = {}
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
        self.route_latency_ns[(src, dst)] = lat
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

    def dynamic_energy_pj(self) -> dict[str, float]:
        total = sum(b * self.graph.edges[hop]["cfg"].pj_per_byte for hop, b in self.link_bytes.items())
        return {"links": total}

    @property
    def static_mw(self) -> float:
        return 0.0

    @property
    def area_mm2(self) -> float:
        return 0.0
