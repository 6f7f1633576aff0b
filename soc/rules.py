"""Pruning rules as the hardware sees them: one code per rule and what each costs the scorer in passes.

The single owner of facts that the dataflow (bytes, array loads), the scorer's timing and the functional
layer all read: the rule codes, that a margin rule over several key tiles needs a second scoring pass (the
first finds the row maximum), and which CIM/digital pair runs a head (so that the analog fixed pattern of that
pair's array is the one applied to the head's scores). Numpy only: no block, no config.
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


def pair_of_kv_head(layer: np.ndarray | int, kv_head: np.ndarray | int, kv_heads: int, pairs: int):
    """The CIM/digital pair that runs (layer, KV head): round-robin over the pairs, so a GQA group's query heads
    run in sequence on one pair and share its K/V, key MSBs and array."""
    return (layer * kv_heads + kv_head) % max(1, pairs)
