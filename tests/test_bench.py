"""`soc bench`'s floors measure what they claim (the figures themselves are only meaningful on a quiet machine)."""

from soc.faces.bench import simpy_pipeline


def test_raw_simpy_pipeline_costs_18_events_per_tile():
    """Per tile: four stages x (Request, timeout, Release) + three Stores x (put, get) = 18 events; per
    process one Initialize and one end."""
    _, e100 = simpy_pipeline([100])
    _, e50 = simpy_pipeline([50])
    assert e100 - e50 == 18 * 50
    assert e100 == 18 * 100 + 2 * 4
    _, two_pairs = simpy_pipeline([30, 20])  # pairs run side by side: the counts add
    assert two_pairs == 18 * 50 + 2 * 8

