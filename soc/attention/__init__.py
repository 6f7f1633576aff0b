"""The functional layer: exact attention, the analog CIM's approximate scores, the pruning comparator,
accuracy metrics and the per-chunk counts that drive the timing model. Pure numpy, no SimPy."""

from soc.attention.approx import ApproxScores, approx_scores, msb_quantize
from soc.attention.cim_layer import PrunedLayer, cim_scores, prune_layer
from soc.attention.exact import attention, expand_kv, softmax_masked, valid_mask
from soc.attention.functional import CHUNK_INDEX_KEYS, FunctionalResult, run_functional
from soc.attention.metrics import AccuracyTally
from soc.attention.plan import COUNT_KEYS, chunk_counts
from soc.attention.pruning import calibrate_thresholds, prune_mask
from soc.attention.spec import CimQuantSpec, LayerRule, PruningSpec, SpecError

__all__ = ["ApproxScores", "approx_scores", "msb_quantize", "PrunedLayer", "cim_scores", "prune_layer",
           "attention", "expand_kv", "softmax_masked", "valid_mask", "CHUNK_INDEX_KEYS", "FunctionalResult",
           "run_functional", "AccuracyTally", "COUNT_KEYS", "chunk_counts", "calibrate_thresholds",
           "prune_mask", "CimQuantSpec", "LayerRule", "PruningSpec", "SpecError"]
