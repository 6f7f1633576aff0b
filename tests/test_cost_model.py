"""The cost model: area, leakage and energy follow each block's size and precision through the technology table,
checked against independent calculations (the table's published figures, counts recounted from the masks)."""

from __future__ import annotations

import pytest

from soc.config import load_config
from soc.errors import ConfigError
from soc.simulate import simulate
from soc.tech import load_tech, parse_tech

PAPER = "configs/hybrid65nm.yaml"
TECH = load_tech("65nm")


def _run(trace, *sets, config=PAPER, **kw):
    return simulate(load_config(config, list(sets)), trace, model_accuracy=False, **kw).report


def _sheet(report, group, key):
    where = report["area"]["tech"] if key == "area_mm2" else report["energy"]["tech"]
    return where[group][key]


# --- the technology table ----------------------------------------------------------------------------------
def test_tables_tag_every_entry_and_scale_between_nodes():
    t28 = load_tech("28nm")
    for t in (TECH, t28):
        for key, e in t.entries.items():
            assert e.source.split(":")[0] in ("published", "derived", "assumed"), key
            assert (e.low is None or e.low <= e.value) and (e.high is None or e.value <= e.high), key
    # Horowitz ISSCC 2014 at 45 nm: an 8-bit multiply is 0.2 pJ and 282 um2; 65 nm x2.0 energy, (65/45)^2 area
    assert TECH["mult_pj_per_bit2"] * 64 == pytest.approx(0.2 * 2.0, rel=1e-3)
    assert TECH["mult_um2_per_bit2"] * 64 == pytest.approx(282 * (65 / 45) ** 2, rel=1e-3)
    assert t28["mult_um2_per_bit2"] < TECH["mult_um2_per_bit2"] and t28["mult_pj_per_bit2"] < TECH["mult_pj_per_bit2"]
    assert TECH.at("low")["mult_pj_per_bit2"] < TECH["mult_pj_per_bit2"] < TECH.at("high")["mult_pj_per_bit2"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["entries"].pop("comparator_pj"), r"x.yaml: entries.comparator_pj: missing"),
    (lambda d: d["entries"]["exp_pj"].update(value=-1), r"x.yaml: entries.exp_pj.value: expected a finite number"),
    (lambda d: d["entries"]["exp_pj"].update(source="guess"), r"entries.exp_pj.source: expected text starting"),
    (lambda d: d["entries"]["exp_pj"].update(low=100.0), r"entries.exp_pj: expected low <= value <= high"),
    (lambda d: d.update(format="x"), r"x.yaml: format: expected 'soc.tech/1'"),
])
def test_a_bad_table_names_the_file_and_the_key(edit, message):
    import yaml

    data = yaml.safe_load(open(TECH.path, encoding="utf-8"))
    edit(data)
    with pytest.raises(ConfigError, match=message):
        parse_tech(data, "x.yaml", "x")


def test_a_config_names_an_unknown_table_or_entry(small_trace):
    with pytest.raises(ConfigError, match=r"tech: no technology table .*7nm.yaml"):
        _run(small_trace, "tech=7nm")
    with pytest.raises(ConfigError, match=r"tech_overrides.nope: no such entry"):
        _run(small_trace, "tech_overrides.nope=1.0")


# --- each block's law ----------------------------------------------------------------------------------------
def test_doubling_mac_lanes_doubles_the_datapath_area_and_leakage(small_trace):
    r = {n: _run(small_trace, f"digital.mac_lanes={n}") for n in (32, 64, 128)}
    area = {n: x["area"]["by_block"]["digital"] for n, x in r.items()}
    static = {n: _sheet(x, "digital", "static_mw")["value"] for n, x in r.items()}
    # the datapath grows linearly with lanes: each doubling adds twice what the previous one added
    assert area[128] - area[64] == pytest.approx(2 * (area[64] - area[32]), rel=1e-9)
    assert static[128] - static[64] == pytest.approx(2 * (static[64] - static[32]), rel=1e-9)
    # one lane from Horowitz's figures at 45 nm: an 8x8 multiplier (282 um2), a 24-bit adder (3 x 36 um2) and
    # 40 flip-flops of NanGate45 DFF_X1 (4.522 um2), scaled by (65/45)^2
    lane_um2 = (282 + 3 * 36 + 40 * 4.522) * (65 / 45) ** 2
    assert area[128] - area[64] == pytest.approx(64 * lane_um2 * 1e-6, rel=1e-3)
    assert r[128]["area"]["total_mm2"] > r[64]["area"]["total_mm2"]


def test_gops_per_mm2_rises_no_more_than_the_throughput_gain(small_trace):
    """A compute-bound (dense) run: more lanes buy speed, and their area is paid for."""
    r = {n: _run(small_trace, f"digital.mac_lanes={n}", config="configs/dense-digital.yaml") for n in (64, 128)}
    gain = r[64]["time"]["latency_ns"] / r[128]["time"]["latency_ns"]
    assert gain > 1.3  # compute-bound
    density = r[128]["area"]["gops_per_mm2"] / r[64]["area"]["gops_per_mm2"]
    assert density <= gain * r[64]["area"]["total_mm2"] / r[128]["area"]["total_mm2"] * (1 + 1e-9)
    assert density < gain


def test_cim_energy_per_mac_scales_with_query_bits_times_key_bits(small_trace):
    r = {(q, k): _run(small_trace, f"cim.query_bits={q}", f"cim.key_bits={k}") for q, k in ((4, 4), (4, 8), (8, 8))}
    per_mac = {qk: x["energy"]["detail"]["cim"]["mac"] / x["energy"]["counts"]["cim0"]["macs"] for qk, x in r.items()}
    assert per_mac[(4, 8)] / per_mac[(4, 4)] == pytest.approx(2.0, rel=1e-9)
    assert per_mac[(8, 8)] / per_mac[(4, 4)] == pytest.approx(4.0, rel=1e-9)
    # a whole score (mac + comparator + its share of array writes) at 8-bit keys: at least 1.8x
    per_score = {qk: x["energy"]["cim_energy_per_score_pj"] for qk, x in r.items()}
    assert per_score[(4, 8)] / per_score[(4, 4)] >= 1.8


def test_cim_area_follows_rows_times_columns(small_trace):
    base = _run(small_trace)
    wide = _run(small_trace, "cim.array_cols=256")
    tall = _run(small_trace, "cim.array_rows=256")
    a = lambda x: x["area"]["by_block"]["cim"]  # noqa: E731
    # 128 more columns: 128 x 128 cells and 128 comparators; 128 more rows: cells, wordline drivers and
    # 2 x 4 query register bits per row
    cell, cmp, wl, reg = (TECH[k] for k in ("cim_cell_um2", "comparator_um2", "wordline_driver_um2", "reg_bit_um2"))
    assert a(wide) - a(base) == pytest.approx(128 * (128 * cell + cmp) * 1e-6, rel=1e-9)
    assert a(tall) - a(base) == pytest.approx(128 * (128 * cell + wl + 8 * reg) * 1e-6, rel=1e-9)


def test_sram_energy_and_area_follow_bank_size(small_trace):
    r = {b: _run(small_trace, f"sram.bank_bytes={b}") for b in (8192, 32768)}
    per_byte = {b: x["energy"]["detail"]["sram"]["read"] / x["traffic"]["sram_read_bytes"] for b, x in r.items()}
    # Horowitz: a 64-bit read costs 10 pJ from 8 KB and 20 pJ from 32 KB
    assert per_byte[32768] / per_byte[8192] == pytest.approx(20 / 10, rel=1e-9)
    assert per_byte[8192] * 1e12 == pytest.approx(10 / 8 * 2.0, rel=1e-9)  # x2.0 from 45 to 65 nm
    area = {b: x["area"]["by_block"]["sram"] for b, x in r.items()}
    bits = 8 * 8 * (32768 - 8192)  # 8 banks
    assert area[32768] - area[8192] == pytest.approx(bits * TECH["sram_bitcell_um2"]
                                                     / TECH["sram_array_efficiency"] * 1e-6, rel=1e-9)


def test_an_explicit_value_overrides_the_law_and_is_marked_user(small_trace):
    derived = _run(small_trace)
    given = _run(small_trace, "digital.mac_pj=0.5", "cim.area_mm2=0.3")
    assert _sheet(derived, "digital", "mac_pj")["source"].startswith("derived: ")
    assert _sheet(given, "digital", "mac_pj") == {"value": 0.5, "unit": "pJ", "source": "user"}
    assert given["area"]["by_block"]["cim"] == 0.3 and _sheet(given, "cim", "area_mm2")["source"] == "user"
    assert given["energy"]["detail"]["digital"]["mac"] == pytest.approx(
        0.5e-12 * given["energy"]["counts"]["digital0"]["macs"])


def test_unmodelled_die_parts_come_from_pads_and_utilization_not_from_a_residual(small_trace, paper_cfg):
    r = _run(small_trace)
    blocks = sum(v for k, v in r["area"]["by_block"].items() if k != "other")
    want = paper_cfg.io_pads * TECH["io_pad_um2"] * 1e-6 + blocks * (1 / paper_cfg.core_utilization - 1)
    assert r["area"]["by_block"]["other"] == pytest.approx(want, rel=1e-9)
    assert r["energy"]["by_block"]["other"] == 0.0 and "unknown" in r["energy"]["unmodelled"]


# --- one run recomputed from the masks --------------------------------------------------------------------
def test_compute_energy_recomputed_from_the_masks_and_the_table(paper_cfg, small_trace):
    """CIM and digital energy from counts taken from the keep masks (not the report's counters), priced with
    the technology table's entries by the laws README states."""
    res = simulate(paper_cfg, small_trace, keep_masks=True, model_accuracy=False)
    r, m, cim, dig = res.report, small_trace.meta, paper_cfg.cim, paper_cfg.digital
    hd, seq_q, seq_k = m.head_dim, small_trace.q.shape[2], m.seq_len
    tile, qt = res.stats.key_tile, paper_cfg.dataflow.q_tile_rows
    assert not m.causal and seq_k > tile  # every (query, key) pair is scored; the array is reloaded per chunk
    heads = m.layers * m.heads
    scores = heads * seq_q * seq_k
    q_tiles = -(-seq_q // qt)
    write_bits = heads * q_tiles * seq_k * hd * cim.key_bits
    kept = rows_kept = 0
    for mask in res.functional.masks:  # (heads, seq_q, seq_k) per layer
        kept += int(mask.sum())
        for k0 in range(0, seq_k, tile):
            rows_kept += int(mask[:, :, k0:k0 + tile].any(axis=2).sum())
    t = TECH
    cim_pj = (scores * hd * cim.query_bits * cim.key_bits * t["cim_cell_step_fj"] * 1e-3
              + scores * t["comparator_pj"]
              + write_bits * t["sram_read_pj_per_byte"] * (128 * 128 / 8 / 8192) ** 0.5 * t["sram_write_over_read"] / 8)
    b, acc = dig.operand_bits, dig.accumulator_bits
    mac_pj = b * b * t["mult_pj_per_bit2"] + acc * t["add_pj_per_bit"] + (2 * b + acc) * t["reg_bit_pj"]
    dig_pj = (2 * kept * hd + rows_kept * hd) * mac_pj + kept * t["exp_pj"]
    d = r["energy"]["detail"]
    assert sum(v for k, v in d["cim"].items() if k != "static") == pytest.approx(cim_pj * 1e-12, rel=1e-9)
    assert sum(v for k, v in d["digital"].items() if k != "static") == pytest.approx(dig_pj * 1e-12, rel=1e-9)


# --- ops convention ---------------------------------------------------------------------------------------
def test_ops_are_reported_per_kind_in_one_convention(paper_cfg, small_trace):
    r = _run(small_trace)
    ops, c = r["throughput"]["ops"], r["energy"]["counts"]
    assert "1 MAC = 2 ops" in r["throughput"]["ops_convention"]
    assert ops["cim"] == 2 * c["cim0"]["macs"] and ops["digital"] == 2 * c["digital0"]["macs"]
    m = small_trace.meta
    assert ops["dense_equivalent"] == 2 * 2 * m.layers * m.heads * small_trace.q.shape[2] * m.seq_len * m.head_dim
    e = r["energy"]
    assert e["tops_per_w_by_ops"]["cim"] == pytest.approx(ops["cim"] * 1e-12 / e["on_chip_j"])


# --- soc paper: calibration apart from validation ---------------------------------------------------------
@pytest.fixture(scope="module")
def paper():
    from soc.faces.paper import paper_table

    return paper_table(), paper_table(overrides=("digital.mac_pj=0.5",))


def test_paper_fits_only_the_analog_core_and_the_table_holds_the_fit(paper):
    from soc.faces.paper import FITTED, PUBLISHED, peak_figures

    (cals, _), _ = paper
    typ = cals[0]
    assert set(typ.fitted) == set(FITTED)
    fig = peak_figures(typ.report)
    assert fig["analog_tops_per_w"] == pytest.approx(PUBLISHED["analog_tops_per_w"], rel=1e-6)
    assert fig["analog_gops_per_mm2"] == pytest.approx(PUBLISHED["analog_gops_per_mm2"], rel=1e-6)
    for k in FITTED:  # the bundled table holds what the calibration finds (4 significant digits)
        assert typ.table[k] == pytest.approx(typ.fitted[k], rel=1e-3), k


def test_paper_prediction_moves_with_a_digital_parameter(paper):
    (cals, rows), (cals_half, rows_half) = paper
    soc = {r.figure: r for r in rows}["SoC energy efficiency"]
    half = {r.figure: r for r in rows_half}["SoC energy efficiency"]
    assert half.simulated > soc.simulated * 1.05  # cheaper digital MACs: a better SoC, nothing refitted to hide it
    assert cals_half[0].fitted == pytest.approx(cals[0].fitted, rel=1e-9)  # the analog fit does not move
    assert soc.low <= soc.simulated <= soc.high
