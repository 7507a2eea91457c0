"""Retrieval metrics over a text-to-video score matrix (the MIL-NCE definitions).

MIL-NCE sorts each text row's scores in descending order and takes the (0-based) position of the
matching video as its rank; R@k is the fraction of rows with rank < k and MR (median rank) is
median(rank) + 1. We compute the same rank without sorting, as a count of competitors, which makes
the tie policy explicit (MIL-NCE's own code leaves it undefined: with a tie its ``np.where`` returns
several positions for one row and the metrics are computed over the wrong number of entries).
"""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)


def ground_truth_ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of the ground-truth video for every text.

    Args:
        scores: float [N, N], rows = texts, columns = videos, text i matches video i.

    Returns:
        int64 [N]: rank[i] = number of *other* videos j with scores[i, j] >= scores[i, i].

    Tie policy (pessimistic): a competitor that ties the ground truth counts as ranked above it.
    So a constant score matrix (a collapsed model) gets the worst rank on every row instead of a
    perfect R@1, and a video that could not be read, scored -inf, is a miss for its own text
    (rank N-1 at best ties) and never outranks another text's video. NaN is treated as -inf for
    the same reason. Without ties this equals the position in ``np.argsort(-row)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"expected a square [texts, videos] score matrix, got shape {scores.shape}")
    scores = np.where(np.isnan(scores), -np.inf, scores)
    positives = np.diag(scores)[:, None]
    # ">=" counts the diagonal itself once; subtract it.
    return (scores >= positives).sum(axis=1).astype(np.int64) - 1


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """From 0-based ranks [N]: ``R@k`` in percent (100 · mean(rank < k), as papers report it),
    ``MedR`` = median(rank) + 1 (MIL-NCE's "MR") and ``MeanR`` = mean(rank) + 1."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out = {f"R@{k}": 100.0 * float(np.mean(ranks < k)) for k in ks}
    out["MedR"] = float(np.median(ranks) + 1)
    out["MeanR"] = float(np.mean(ranks) + 1)
    return out


def retrieval_metrics(scores: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """R@1/5/10 (%), MedR, MeanR for a [texts, videos] score matrix with ground truth on the diagonal.

    Ranks follow :func:`ground_truth_ranks` (pessimistic ties); on tie-free matrices the numbers
    equal MIL-NCE's ``compute_metrics`` (R1/R5/R10 there are fractions: ×100 here; MR = MedR).
    """
    return metrics_from_ranks(ground_truth_ranks(scores), ks)


def recall_curve(ranks: np.ndarray, max_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Recall@K for K = 1 … max_k (default: number of candidates) from 0-based ranks [N].

    Returns (ks int [K], recall float [K]).
    """
    ranks = np.asarray(ranks)
    max_k = int(max_k or ranks.size)
    ks = np.arange(1, max_k + 1)
    counts = np.bincount(np.minimum(ranks, max_k), minlength=max_k + 1)[:max_k]
    return ks, np.cumsum(counts) / ranks.size
