"""Shared fixtures: small SoC configs and small realistic traces."""

from __future__ import annotations

import pytest

from soc.config import load_config


@pytest.fixture(scope="session")
def paper_cfg():
    return load_config("configs/hybrid65nm.yaml")


@pytest.fixture(scope="session")
def dense_cfg():
    return load_config("configs/dense-digital.yaml")


@pytest.fixture(scope="session")
def small_trace():
    """A MiniLM-shaped synthetic trace: 2 layers, seq 256 (several query and key tiles)."""
    from soc.trace import synth_trace
    from soc.trace.workload import load_workload

    return synth_trace(load_workload("minilm-l6"), seq_len=256, layers=2, seed=1)


@pytest.fixture(scope="session")
def causal_trace():
    from soc.trace import synth_trace
    from soc.trace.workload import load_workload

    return synth_trace(load_workload("smollm2-135m"), seq_len=192, layers=2, seed=2)
