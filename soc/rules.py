"""Pruning rules as the hardware sees them: one code per rule and what each costs the scorer in passes.

The single owner of two facts that the dataflow (bytes, array loads) and the scorer's timing both read:
the rule codes, and that a margin rule over several key tiles needs a second scoring pass (the first finds the
row maximum). Numpy only: no block, no config.
"""

from __future__ import annotations

import numpy as np

RULE_CODES = {"none": 0, "threshold": 1, "margin": 2, "topk": 3}


def scoring_passes(rule_code: np.ndarray, key_tiles_per_head: np.ndarray) -> np.ndarray:
    """Scoring passes per chunk: 2 for a margin rule whose head spans several key tiles, else 1."""
    return np.where((rule_code == RULE_CODES["margin"]) & (key_tiles_per_head > 1), 2.0, 1.0)


def needs_max_tree(rule_code: np.ndarray, key_tiles_per_head: np.ndarray) -> np.ndarray:
    """A margin rule whose head fits in one key tile finds the row maximum with a max tree in the same pass."""
    return (rule_code == RULE_CODES["margin"]) & (key_tiles_per_head <= 1)


def needs_sorter(rule_code: np.ndarray) -> np.ndarray:
    """Top-k reads the scores out and sorts them."""
    return rule_code == RULE_CODES["topk"]
