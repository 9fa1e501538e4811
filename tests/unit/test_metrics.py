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


def test_calibration_error_of_calibrated_and_overconfident_scores():
    from mlscale.train.metrics import expected_calibration_error, reliability

    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 200_000)
    labels = (rng.uniform(0, 1, scores.size) < scores).astype(float)
    calibrated = BinaryMetrics()
    calibrated.update(scores, labels)
    assert calibrated.result("x")["x_ece"] < 0.01
    overconfident = BinaryMetrics()
    overconfident.update(np.clip(0.5 + 1.5 * (scores - 0.5), 0, 1), labels)
    assert overconfident.result("x")["x_ece"] == pytest.approx(1 / 12, abs=0.01)  # E|q - s| worked out by hand
    table = reliability(calibrated.histograms, 10)
    assert table["rows"].sum() == scores.size
    np.testing.assert_allclose(table["observed"], table["predicted"], atol=0.02)
    assert expected_calibration_error(np.zeros((2, 64))) != expected_calibration_error(np.zeros((2, 64)))  # nan


def test_regression_metrics_merge_to_the_direct_values():
    from mlscale.train.metrics import RegressionMetrics, metrics_from_vector

    rng = np.random.default_rng(1)
    targets = rng.normal(10, 30, 5000)
    predictions = targets + rng.normal(0, 5, 5000)
    parts = [RegressionMetrics() for _ in range(3)]
    for part, chunk in zip(parts, np.array_split(np.arange(5000), 3), strict=True):
        part.update(predictions[chunk], targets[chunk])
    merged = metrics_from_vector("regression", parts[0].merge(parts[1]).merge(parts[2]).to_vector())
    result = merged.result("val")
    assert result["val_rmse"] == pytest.approx(np.sqrt(np.mean((predictions - targets) ** 2)))
    assert result["val_mae"] == pytest.approx(np.mean(np.abs(predictions - targets)))
    assert result["val_r2"] == pytest.approx(1 - np.mean((predictions - targets) ** 2) / np.var(targets))
    assert result["val_rows"] == 5000


def test_binary_vector_round_trip_keeps_everything():
    rng = np.random.default_rng(2)
    metrics = BinaryMetrics(bins=256)
    metrics.update(rng.uniform(0, 1, 1000), rng.integers(0, 2, 1000))
    restored = BinaryMetrics.from_vector(metrics.to_vector())
    assert restored.result("v") == metrics.result("v")
