"""Accuracy of pruned attention against exact dense attention, accumulated over a whole trace.

Per trace (and per layer):
- ``kept_fraction``: kept valid pairs / valid pairs;
- ``mass_kept``: mean over query rows of the exact softmax probability mass that falls on kept keys;
- ``output_rel_err``: ||O_pruned - O_exact||_F / ||O_exact||_F over all layers, heads, rows and dims;
- ``top1_agreement``: fraction of query rows whose argmax key under the pruned softmax equals the argmax under
  the exact softmax (an empty row never agrees);
- ``empty_rows``: query rows with valid keys but none kept (their output is zero).

Argmaxes are taken on the logits, which rank keys exactly as the probabilities do without float rounding ties.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from soc.attention.exact import MaskMemo, kept_mass


@dataclass
class _Counts:
    valid_pairs: int = 0
    kept_pairs: int = 0
    rows: int = 0
    mass_sum: float = 0.0
    top1_hits: int = 0
    empty_rows: int = 0
    err_sq: float = 0.0
    ref_sq: float = 0.0

    def merge(self, other: _Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        return {
            "kept_fraction": self.kept_pairs / self.valid_pairs if self.valid_pairs else 1.0,
            "mass_kept": self.mass_sum / self.rows if self.rows else 1.0,
            "output_rel_err": _rel_err(self.err_sq, self.ref_sq),
            "top1_agreement": self.top1_hits / self.rows if self.rows else 1.0,
            "empty_rows": self.empty_rows,
            "valid_pairs": self.valid_pairs,
            "kept_pairs": self.kept_pairs,
            "query_rows": self.rows,
        }


def _rel_err(err_sq: float, ref_sq: float) -> float:
    # An all-zero exact output (V = 0) has no scale: report the absolute error instead of dividing by zero.
    if ref_sq > 0:
        return float(np.sqrt(err_sq / ref_sq))
    return float(np.sqrt(err_sq))


_VALID_ROWS = MaskMemo()  # (rows with a valid key, valid pairs) of a validity: once per run


def layer_counts(valid: np.ndarray, keep: np.ndarray, logits: np.ndarray | None, probs_exact: np.ndarray | None,
                 out_exact: np.ndarray, out_pruned: np.ndarray, exact_arg: np.ndarray | None = None,
                 mass_kept: np.ndarray | None = None) -> _Counts:
    """The accuracy counters of one layer (or a slice of its heads); arrays (H, Sq, Sk) / (H, Sq, D).

    ``exact_arg`` (H, Sq), each row's first maximum of the logits over its valid keys, replaces ``logits``
    when the caller has it already; ``mass_kept`` (H, Sq), each row's exact probability on its kept keys,
    replaces ``probs_exact``."""
    heads = keep.shape[0]
    rows_valid, n_valid = _VALID_ROWS.get((valid,), None, lambda: (valid.any(axis=-1), int(np.count_nonzero(valid))))
    row_has_valid = np.broadcast_to(rows_valid, keep.shape[:-1])
    row_has_kept = keep.any(axis=-1)
    mass = mass_kept if mass_kept is not None else kept_mass(probs_exact, keep)
    # argmax returns the first maximum and kept keys are a subset of valid ones, so the pruned argmax equals
    # the exact one exactly when the exact argmax key is kept.
    if exact_arg is None:
        exact_arg = np.where(np.broadcast_to(valid, keep.shape), logits, -np.inf).argmax(axis=-1)
    agree = np.take_along_axis(keep, exact_arg[..., None], axis=-1)[..., 0]
    diff = out_pruned.astype(np.float64) - out_exact
    valid_pairs = n_valid * (heads if valid.ndim == 2 else 1)
    return _Counts(
        valid_pairs=int(valid_pairs),
        kept_pairs=int(np.count_nonzero(keep)),
        rows=int(np.count_nonzero(row_has_valid)),
        mass_sum=float(mass[row_has_valid].sum()),
        top1_hits=int(np.count_nonzero(agree & row_has_valid)),
        empty_rows=int(np.count_nonzero(row_has_valid & ~row_has_kept)),
        err_sq=float(np.vdot(diff, diff)),
        ref_sq=float(np.vdot(out_exact.astype(np.float64), out_exact)),
    )


@dataclass
class AccuracyTally:
    """Accumulates accuracy counters layer by layer (a layer may be added in several head slices)."""

    layers: dict[int, _Counts] = field(default_factory=dict)

    def add_layer(self, layer: int, *, valid: np.ndarray, keep: np.ndarray, logits: np.ndarray | None,
                  probs_exact: np.ndarray | None, out_exact: np.ndarray, out_pruned: np.ndarray,
                  exact_arg: np.ndarray | None = None, mass_kept: np.ndarray | None = None) -> None:
        """Add the pairs of ``layer`` (all heads or a slice of them): shapes as in :func:`layer_counts`."""
        counts = layer_counts(valid, keep, logits, probs_exact, out_exact, out_pruned, exact_arg, mass_kept)
        self.layers.setdefault(layer, _Counts()).merge(counts)

    def total(self) -> _Counts:
        out = _Counts()
        for counts in self.layers.values():
            out.merge(counts)
        return out

    def as_dict(self) -> dict:
        """Trace-wide kept_fraction, mass_kept, output_rel_err, top1_agreement, empty_rows and counts."""
        return self.total().summary()

    def per_layer(self) -> list[dict]:
        """The same summary for each layer, in layer order, with its ``layer`` index."""
        return [{"layer": layer, **self.layers[layer].summary()} for layer in sorted(self.layers)]
