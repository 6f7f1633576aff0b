"""Energy and area: the books balance, static energy follows latency, and one run recomputed by hand."""

from __future__ import annotations

import pytest

from soc.config import load_config
from soc.simulate import simulate


@pytest.fixture(scope="module")
def run(paper_cfg, small_trace):
    return simulate(paper_cfg, small_trace).report


def test_energy_by_block_sums_to_total(run):
    e = run["energy"]
    assert sum(e["by_block"].values()) == pytest.approx(e["total_j"], rel=1e-12)
    assert e["total_j"] - e["by_block"]["dram"] == pytest.approx(e["on_chip_j"], rel=1e-12)
    for block, parts in e["detail"].items():
        assert sum(parts.values()) == pytest.approx(e["by_block"][block], rel=1e-12), block
    assert sum(run["area"]["by_block"].values()) == pytest.approx(run["area"]["total_mm2"])


def test_static_energy_scales_with_latency(small_trace):
    slow = simulate(load_config("configs/hybrid65nm.yaml", ["digital.mac_lanes=16"]), small_trace).report
    fast = simulate(load_config("configs/hybrid65nm.yaml", ["digital.mac_lanes=128"]), small_trace).report
    ratio = slow["time"]["latency_ns"] / fast["time"]["latency_ns"]
    assert ratio > 1.5
    for block in ("cim", "sram", "token_buffer"):
        assert slow["energy"]["static_by_block"][block] / fast["energy"]["static_by_block"][block] == pytest.approx(ratio)
    for r in (slow, fast):  # the digital core's static power follows its lanes; its energy, the latency
        mw = r["energy"]["tech"]["digital"]["static_mw"]["value"]
        assert r["energy"]["static_by_block"]["digital"] == pytest.approx(mw * 1e-3 * r["time"]["latency_ns"] * 1e-9)


def test_energy_recomputed_by_hand_from_counts_and_the_cost_sheets(run):
    """The books: every block's energy is its counts times its sheet's per-event costs plus static x time."""
    c, e, sheet = run["energy"]["counts"], run["energy"], run["energy"]["tech"]
    seconds = run["time"]["latency_ns"] * 1e-9
    v = lambda group, key: sheet[group][key]["value"]  # noqa: E731
    cim = (c["cim0"]["macs"] * v("cim", "mac_pj") + c["cim0"]["compares"] * v("cim", "compare_pj")
           + c["cim0"]["write_bits"] * v("cim", "write_pj_per_bit")) * 1e-12 + v("cim", "static_mw") * 1e-3 * seconds
    digital = (c["digital0"]["macs"] * v("digital", "mac_pj") + c["digital0"]["exps"] * v("digital", "softmax_pj")) \
        * 1e-12 + v("digital", "static_mw") * 1e-3 * seconds
    t = run["traffic"]
    sram = (t["sram_read_bytes"] * v("sram", "read_pj_per_byte") + t["sram_write_bytes"] * v("sram", "write_pj_per_byte")) \
        * 1e-12 + v("sram", "static_mw") * 1e-3 * seconds
    cfg = run["config"]
    dram = (t["dram_read_bytes"] * cfg["dram"]["read_pj_per_byte"] + t["dram_write_bytes"] * cfg["dram"]["write_pj_per_byte"]) \
        * 1e-12 + cfg["dram"]["static_mw"] * 1e-3 * seconds
    links = {(link["a"], link["b"]): v("interconnect", f"{link['a']}<->{link['b']}.pj_per_byte")
             for link in cfg["interconnect"]["links"]}
    net = sum(b * links.get(tuple(k.split("->")), links.get(tuple(reversed(k.split("->"))), 0.0))
              for k, b in t["link_bytes"].items()) * 1e-12
    assert e["by_block"]["cim"] == pytest.approx(cim)
    assert e["by_block"]["digital"] == pytest.approx(digital)
    assert e["by_block"]["sram"] == pytest.approx(sram)
    assert e["by_block"]["dram"] == pytest.approx(dram)
    assert e["by_block"]["interconnect"] == pytest.approx(net)
    # ops: analog MACs x 2 over the CIM's energy
    assert e["cim_tops_per_w"] == pytest.approx(2 * c["cim0"]["macs"] * 1e-12 / cim)


def test_sram_energy_per_byte_grows_with_bank_size(small_trace):
    runs = {b: simulate(load_config("configs/hybrid65nm.yaml", [f"sram.bank_bytes={b}"]), small_trace).report
            for b in (8192, 32768)}
    per_byte = {b: r["energy"]["detail"]["sram"]["read"] / r["traffic"]["sram_read_bytes"] for b, r in runs.items()}
    assert per_byte[32768] == pytest.approx(2 * per_byte[8192])  # sqrt(4): longer bitlines and wordlines
