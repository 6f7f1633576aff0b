"""Config loading: strict validation with key paths, extends:, --set overrides, provenance."""

from __future__ import annotations

import pytest

from soc.config import config_from_dict, config_to_dict, load_config
from soc.errors import ConfigError


@pytest.mark.parametrize("data, message", [
    ({"sram": {"banks": -2}}, r"x.yaml: sram.banks: expected an integer in \[1, 1024\], got -2"),
    ({"sram": {"banks": 2.5}}, r"sram.banks: expected an integer .*got 2.5"),
    ({"sram": {"bogus": 1}}, r"sram.bogus: unknown key \(expected one of: .*banks"),
    ({"cim": {"clock_ghz": "fast"}}, r"cim.clock_ghz: expected a number in \(0, 10\], got .fast."),
    ({"cim": {"clock_ghz": 0}}, r"cim.clock_ghz: expected a number in \(0, 10\], got 0"),
    ({"cim": {"enabled": "yes"}}, r"cim.enabled: expected true or false, got 'yes'"),
    ({"pruning": {"rule": "magic"}}, r"pruning.rule: expected one of none, threshold, margin, topk, got 'magic'"),
    ({"pruning": {"per_layer": {2: {"margin": -1}}}}, r"pruning.per_layer.2.margin: expected a number >= 0"),
    ({"interconnect": {"links": [{"a": "dram"}]}}, r"interconnect.links\[0\].b: required key is missing"),
    ({"dram": "fast"}, r"dram: expected a mapping, got 'fast'"),
    ({"dram": {"latency_ns": float("nan")}}, r"dram.latency_ns: expected a finite number"),
    ({"provenance": {"cim.bogus": "assumed: x"}}, r"provenance.cim.bogus: no such parameter"),
    ({"provenance": {"cim.mac_pj": "guess"}}, r"provenance.cim.mac_pj: expected text starting with published"),
])
def test_bad_values_name_the_key_and_the_expectation(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "configs/x.yaml")


def test_paper_config_records_provenance_of_its_assumptions():
    cfg = load_config("configs/hybrid65nm.yaml")
    tags = {note.split(":")[0] for note in cfg.provenance.values()}
    assert tags <= {"published", "derived", "assumed"} and "assumed" in tags and "published" in tags
    assert cfg.cim.array_rows * cfg.cim.array_cols == 16 * 1024  # 16 Kb array, published
    assert cfg.technology_nm == 65


def test_extends_and_overrides(tmp_path):
    child = tmp_path / "child.yaml"
    base = tmp_path / "base.yaml"
    base.write_text("name: base\nsram: {banks: 4, bank_bytes: 2048}\ncim: {noise_sigma_lsb: 1.5}\n")
    child.write_text("extends: base.yaml\nname: child\nsram: {banks: 16}\n")
    cfg = load_config(child, ["cim.noise_sigma_lsb=0", "interconnect.links.0.latency_ns=7"])
    assert cfg.name == "child"
    assert cfg.sram.banks == 16 and cfg.sram.bank_bytes == 2048  # merged key by key
    assert cfg.cim.noise_sigma_lsb == 0.0
    dense = load_config("configs/dense-digital.yaml")
    assert not dense.cim.enabled and dense.digital == load_config("configs/hybrid65nm.yaml").digital


def test_extends_cycle_and_missing_file(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, message", [
    ("sram.banks", r"expected dotted.key=value"),
    ("sram.banks=-1", r"sram.banks: expected an integer in \[1, 1024\], got -1"),
    ("interconnect.links.9.latency_ns=1", r"expected an index in 0..3"),
    ("nosuch.key=1", r"nosuch: unknown key"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/hybrid65nm.yaml", [override])


def test_yaml_syntax_error_gives_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsram: {banks: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        load_config(bad)


def test_round_trip_through_plain_data():
    cfg = load_config("configs/hybrid65nm.yaml")
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_every_parameter_of_the_paper_chip_states_its_provenance():
    import yaml

    data = yaml.safe_load(open("configs/hybrid65nm.yaml", encoding="utf-8"))
    provenance = data.pop("provenance")

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    undocumented = [key for key, value in leaves(data)
                    if not isinstance(value, str) and key not in provenance and key != "seed"]
    assert undocumented == []
