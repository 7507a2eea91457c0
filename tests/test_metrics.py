"""Retrieval metrics against a direct implementation of MIL-NCE's definitions."""

import numpy as np
import pytest

from mmpt_lite.evaluation.metrics import ground_truth_ranks, recall_curve, retrieval_metrics


def milnce_reference(scores: np.ndarray) -> dict:
    """MIL-NCE's definitions written out: sort each row descending, rank = position of the diagonal."""
    ranks = np.array([int(np.where(np.argsort(-row, kind="stable") == i)[0][0]) for i, row in enumerate(scores)])
    return {"R@1": 100 * np.mean(ranks < 1), "R@5": 100 * np.mean(ranks < 5), "R@10": 100 * np.mean(ranks < 10),
            "MedR": np.median(ranks) + 1, "MeanR": np.mean(ranks) + 1}


@pytest.mark.parametrize("size,seed", [(7, 0), (50, 1), (200, 2), (1000, 3)])
def test_matches_milnce_on_random_matrices(size, seed):
    rng = np.random.default_rng(seed)
    # A diagonal boost gives a spread of ranks from 0 to the tail rather than uniform noise.
    scores = rng.normal(size=(size, size)) + rng.uniform(0, 3) * np.eye(size)
    got, expected = retrieval_metrics(scores), milnce_reference(scores)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_hand_built_ranks():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],  # ground truth first -> rank 0
        [0.5, 0.4, 0.6, 0.1],  # two above -> rank 2
        [0.3, 0.2, 0.0, 0.1],  # everything above -> rank 3
        [0.0, 0.9, 0.1, 0.5],  # one above -> rank 1
    ])
    np.testing.assert_array_equal(ground_truth_ranks(scores), [0, 2, 3, 1])
    metrics = retrieval_metrics(scores)
    assert metrics["R@1"] == 25.0 and metrics["R@5"] == 100.0
    assert metrics["MedR"] == 2.5  # median of 0-based ranks [0, 1, 2, 3] is 1.5, + 1
    assert metrics["MeanR"] == 2.5


def test_ties_count_against_the_ground_truth():
    scores = np.array([
        [1.0, 1.0, 0.0],  # tie with one other video -> rank 1, not 0
        [0.5, 0.5, 0.5],  # tie with both -> worst rank 2
        [0.0, 0.0, 2.0],  # no tie -> rank 0
    ])
    np.testing.assert_array_equal(ground_truth_ranks(scores), [1, 2, 0])
    constant = np.zeros((20, 20))  # a collapsed model must not score R@1 = 100 %
    assert retrieval_metrics(constant)["R@1"] == 0.0
    assert retrieval_metrics(constant)["MedR"] == 20.0


def test_unreadable_video_column_is_a_miss_for_its_text_only():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 6)) + 10 * np.eye(6)
    scores[:, 2] = -np.inf  # video 2 could not be decoded
    ranks = ground_truth_ranks(scores)
    assert ranks[2] == 5
    np.testing.assert_array_equal(np.delete(ranks, 2), 0)
    scores[:, 2] = np.nan  # NaN behaves like -inf rather than winning every comparison
    np.testing.assert_array_equal(ground_truth_ranks(scores), ranks)


def test_recall_curve_is_monotone_and_ends_at_one():
    ranks = np.array([0, 0, 3, 9, 2])
    ks, recall = recall_curve(ranks)
    np.testing.assert_array_equal(ks, np.arange(1, 6))
    np.testing.assert_allclose(recall, [0.4, 0.4, 0.6, 0.8, 0.8])
    _, full = recall_curve(ranks, max_k=10)
    assert full[-1] == 1.0


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(np.zeros((3, 4)))
