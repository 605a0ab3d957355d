"""What a face-score label means, shared by ``predict`` and the report: 40 classes are the
scores 60..99 (label = score − 60), and a net's score is its expected score Σ_k p_k·(60 + k)."""

from __future__ import annotations

import numpy as np

SCORE_MIN = 60
SCORE_CLASSES = 40


def expected_scores(prob: np.ndarray, score_min: float = SCORE_MIN,
                    values: np.ndarray | None = None) -> np.ndarray:
    """Σ_k p_k·value_k per row of an (N, K) probability matrix (float64); values default to
    ``score_min + k``."""
    prob = np.asarray(prob, dtype=np.float64).reshape(len(prob), -1)
    if values is None:
        values = score_min + np.arange(prob.shape[1], dtype=np.float64)
    return prob @ np.asarray(values, dtype=np.float64)
