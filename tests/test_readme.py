"""README stays true: its parameter table is generated from the config, its library example runs, and every
report.json section it documents exists (and vice versa)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from soc.faces.docs import BEGIN, END, parameter_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_parameter_table_is_current():
    table = README.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == parameter_table(), "run: python -m soc.faces.docs --write"


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


def test_tour_output_is_what_soc_run_prints():
    """Every line of the tour's sample output but the machine's wall time (regenerate: python -m soc.faces.docs --write)."""
    from soc.faces.docs import TOUR_BEGIN, TOUR_END, WALL_LINE, tour_text

    written = README.split(TOUR_BEGIN, 1)[1].split(TOUR_END, 1)[0].strip().splitlines()
    fresh = tour_text().splitlines()
    keep = lambda lines: [line for line in lines if not line.startswith(WALL_LINE)]  # noqa: E731
    assert keep(written) == keep(fresh), "run: python -m soc.faces.docs --write"


def runnable_blocks(text: str) -> list[tuple[str, str, str]]:
    """(first command, cost, block) of every ```bash block right after a `<!-- runnable -->` marker; cost is
    "" (seconds), "slow" (tens of seconds: still in CI) or "expensive" (minutes: only with SOC_README_ALL=1)."""
    blocks = []
    for m in re.finditer(r"<!-- runnable(?:: (slow|expensive))? -->\n```bash\n(.*?)```", text, re.S):
        blocks.append((m.group(2).strip().splitlines()[0][:60], m.group(1) or "", m.group(2)))
    return blocks


def _commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined; a trailing `# comment` is kept (bash ignores it)."""
    return [c for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch copy of the repository (sources and data, no outputs) with a `soc` command on PATH."""
    import os
    import shutil
    import sys

    root = tmp_path_factory.mktemp("repo")
    for name in ("soc", "configs", "traces", "workloads", "sweeps", "docs", "benchmarks", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "generated", "*.big"))
        elif src.exists():
            shutil.copy2(src, root / name)
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    (bin_dir / "soc").write_text(f"#!/bin/sh\nexec {sys.executable} -m soc \"$@\"\n")
    (bin_dir / "soc").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(root),
           "OPENBLAS_NUM_THREADS": "1"}
    return root, env


BLOCKS = runnable_blocks(README)


def test_readme_marks_runnable_blocks():
    assert len([b for b in BLOCKS if not b[1]]) >= 2 and all(_commands(b[2]) for b in BLOCKS)


def _marks(cost: str) -> list:
    import os

    if cost == "expensive":
        return [pytest.mark.slow, pytest.mark.skipif(not os.environ.get("SOC_README_ALL"),
                                                     reason="minutes; set SOC_README_ALL=1")]
    return [pytest.mark.slow] if cost else []


@pytest.mark.parametrize("first,cost,block", [pytest.param(*b, marks=_marks(b[1])) for b in BLOCKS],
                         ids=[b[0] for b in BLOCKS])
def test_readme_commands_work_as_written(scratch, first, cost, block):
    """Each command of a runnable block, in order, from the scratch copy's root: status 0, no traceback."""
    import subprocess

    root, env = scratch
    slow = bool(cost)
    for command in _commands(block):
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=root, env=env, capture_output=True,
                              text=True, timeout=600 if slow else 120)
        # `| head` closes the pipe early: 141 is how soc says it stopped quietly
        assert proc.returncode in ((0, 141) if "| head" in command else (0,)), (command, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (command, proc.stderr[-2000:])
