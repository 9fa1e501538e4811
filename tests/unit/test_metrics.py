import numpy as np
import pytest

from mlscale.train.metrics import BinaryMetrics, auc_from_histograms, score_histograms


def exact_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_auc_matches_exact(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 3000)
    scores = 1 / (1 + np.exp(-(rng.normal(size=3000) + labels * rng.uniform(0.2, 2))))
    assert auc_from_histograms(score_histograms(scores, labels)) == pytest.approx(exact_auc(scores, labels), abs=1e-3)


def test_auc_extremes():
    labels = np.array([0, 0, 1, 1])
    assert auc_from_histograms(score_histograms(np.array([0.1, 0.2, 0.8, 0.9]), labels)) == 1.0
    assert auc_from_histograms(score_histograms(np.array([0.9, 0.8, 0.2, 0.1]), labels)) == 0.0
    assert np.isnan(auc_from_histograms(score_histograms(np.array([0.3, 0.4]), np.array([1, 1]))))


def test_merged_partials_equal_the_whole():
    rng = np.random.default_rng(3)
    scores, labels = rng.uniform(size=1000), rng.integers(0, 2, 1000)
    whole, first, second = BinaryMetrics(), BinaryMetrics(), BinaryMetrics()
    whole.update(scores, labels)
    first.update(scores[:400], labels[:400])
    second.update(scores[400:], labels[400:])
    merged = first.merge(second).result("x")
    for key, value in whole.result("x").items():
        assert merged[key] == pytest.approx(value)
