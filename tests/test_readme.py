"""README stays true: its parameter table is generated from the config, its library example runs, and every
report.json section it documents exists (and vice versa)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from soc.docs import BEGIN, END, parameter_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_parameter_table_is_current():
    table = README.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == parameter_table(), "run: python -m soc.docs --write"


def test_library_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    block = re.search(r"### Use as a library\s+```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.report["pruning"]["kept_fraction"] == pytest.approx(0.3, abs=0.02)


def test_every_report_section_is_documented():
    import soc

    cfg = soc.load_config("configs/hybrid65nm.yaml")
    trace = soc.load_trace(ROOT / "traces" / "minilm-l6-lighthouse.npz")
    report = soc.simulate(cfg, trace).report
    for section, value in report.items():
        if section == "schema":
            continue
        assert f"`{section}" in README, section
        if isinstance(value, dict) and section not in ("config", "utilization_by_instance", "workload"):
            for key in value:
                if key in ("link_bytes",):
                    continue
                assert key in README, f"{section}.{key}"
