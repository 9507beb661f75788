"""What one pass over the texts gives: :class:`TextScores`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibration import apply_offsets
from .scoring import coverage as _coverage
from .usage import Usage

__all__ = ["TextScores"]


@dataclass(frozen=True)
class TextScores:
    """The model's raw scores of some texts, from one pass to the backend
    (:meth:`skllmprob.LogprobClassifier.score_texts`).

    Every prediction is computed from these without asking the model again:
    ``clf.calibrator_.predict_proba(s.log_mass)`` is ``clf.predict_proba(X)`` and
    ``clf.classes_[clf.calibrator_.predict(s.log_mass)]`` is ``clf.predict(X)``.

    Attributes
    ----------
    log_mass : ndarray of shape (n_samples, n_classes)
        Raw class log-masses, in the order of ``classes_`` (what
        :meth:`~skllmprob.LogprobClassifier.predict_label_logprobs` returns).
    floored : ndarray of bool, shape (n_samples, n_classes)
        Where a top-k backend did not return the class at all (its log-mass is then
        the smallest returned log-probability, an upper bound).
    coverage : ndarray of shape (n_samples,)
        The probability the model put on any label (what
        :meth:`~skllmprob.LogprobClassifier.predict_coverage` returns).
    usage : Usage
        Requests, cache hits and tokens of this pass.

    Examples
    --------
    >>> s = TextScores.from_log_mass(np.log([[0.2, 0.6]]), np.zeros((1, 2), bool), Usage())
    >>> s.coverage, s.raw_proba
    (array([0.8]), array([[0.25, 0.75]]))
    """

    log_mass: np.ndarray
    floored: np.ndarray
    coverage: np.ndarray
    usage: Usage

    @classmethod
    def from_log_mass(cls, log_mass: np.ndarray, floored: np.ndarray, usage: Usage) -> TextScores:
        """Scores with the coverage computed from ``log_mass`` and ``floored``."""
        return cls(log_mass, floored, _coverage(log_mass, floored), usage)

    @property
    def raw_proba(self) -> np.ndarray:
        """The class probabilities without calibration (renormalized log-masses, as
        ``calibration="none"`` gives them)."""
        return apply_offsets(self.log_mass, np.zeros(self.log_mass.shape[1]))

    def __len__(self) -> int:
        return len(self.log_mass)
