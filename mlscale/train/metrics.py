"""Metrics from mergeable sufficient statistics.

ROC AUC and calibration come from per-class score histograms: workers and batches add their histograms, so the
metric over a sharded or streamed dataset needs no gathering of predictions. With 2^14 bins the error is far below
the metric's sampling noise. Regression metrics come from sums of errors. Every accumulator packs into one float64
vector (`to_vector`), which is what an all-reduce across training workers or a Ray Data aggregation adds up.
"""

from __future__ import annotations

import numpy as np

AUC_BINS = 1 << 14
_EPS = 1e-7


def score_histograms(scores: np.ndarray, labels: np.ndarray, bins: int = AUC_BINS) -> np.ndarray:
    """Counts of negatives (row 0) and positives (row 1) per score bin over [0, 1]."""
    index = np.clip((np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    positive = np.asarray(labels) > 0.5
    return np.stack([
        np.bincount(index[~positive], minlength=bins),
        np.bincount(index[positive], minlength=bins),
    ]).astype(np.float64)


def auc_from_histograms(histograms: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties within a bin counted as one half."""
    negatives, positives = histograms
    total = negatives.sum() * positives.sum()
    if total == 0:
        return float("nan")
    negatives_below = np.cumsum(negatives) - negatives
    return float((positives * (negatives_below + 0.5 * negatives)).sum() / total)


def log_loss_sum(scores: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())


def reliability(histograms: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width score bin: rows, mean predicted probability, observed positive rate."""
    negatives, positives = histograms
    fine = len(negatives)
    centers = (np.arange(fine) + 0.5) / fine
    coarse = np.minimum((centers * bins).astype(np.int64), bins - 1)
    counts = np.bincount(coarse, weights=negatives + positives, minlength=bins)
    predicted = np.bincount(coarse, weights=(negatives + positives) * centers, minlength=bins)
    observed = np.bincount(coarse, weights=positives, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"rows": counts, "predicted": predicted / counts, "observed": observed / counts}


def expected_calibration_error(histograms: np.ndarray, bins: int = 15) -> float:
    """Sum over score bins of (share of rows) x |observed positive rate - mean predicted probability|."""
    table = reliability(histograms, bins)
    total = table["rows"].sum()
    if total == 0:
        return float("nan")
    filled = table["rows"] > 0
    gaps = np.abs(table["observed"][filled] - table["predicted"][filled])
    return float((table["rows"][filled] / total * gaps).sum())


class BinaryMetrics:
    """Accumulates AUC histograms, log loss and counts over batches; merge() combines partial results."""

    def __init__(self, bins: int = AUC_BINS) -> None:
        self.histograms = np.zeros((2, bins))
        self.loss_sum = 0.0
        self.rows = 0

    def to_vector(self) -> np.ndarray:
        return np.concatenate([self.histograms.ravel(), [self.loss_sum, self.rows]])

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> BinaryMetrics:
        metrics = cls(bins=(len(vector) - 2) // 2)
        metrics.histograms = np.asarray(vector[:-2], dtype=np.float64).reshape(2, -1)
        metrics.loss_sum, metrics.rows = float(vector[-2]), int(vector[-1])
        return metrics

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.histograms += score_histograms(scores, labels, self.histograms.shape[1])
        self.loss_sum += log_loss_sum(scores, labels)
        self.rows += len(scores)

    def merge(self, other: BinaryMetrics) -> BinaryMetrics:
        merged = BinaryMetrics(self.histograms.shape[1])
        merged.histograms = self.histograms + other.histograms
        merged.loss_sum = self.loss_sum + other.loss_sum
        merged.rows = self.rows + other.rows
        return merged

    def result(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_auc": auc_from_histograms(self.histograms),
            f"{prefix}_log_loss": self.loss_sum / max(self.rows, 1),
            f"{prefix}_ece": expected_calibration_error(self.histograms),
            f"{prefix}_positive_rate": float(self.histograms[1].sum() / max(self.rows, 1)),
            f"{prefix}_rows": float(self.rows),
        }


class RegressionMetrics:
    """Sums of errors and of the target: RMSE, MAE and R^2 over any number of merged partials."""

    def __init__(self) -> None:
        self.sums = np.zeros(5)  # squared error, absolute error, target, target^2, rows

    def update(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        predictions = np.asarray(predictions, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.float64)
        error = predictions - targets
        self.sums += [(error**2).sum(), np.abs(error).sum(), targets.sum(), (targets**2).sum(), len(targets)]

    def to_vector(self) -> np.ndarray:
        return self.sums.copy()

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> RegressionMetrics:
        metrics = cls()
        metrics.sums = np.asarray(vector, dtype=np.float64).copy()
        return metrics

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        return RegressionMetrics.from_vector(self.sums + other.sums)

    @property
    def rows(self) -> int:
        return int(self.sums[4])

    def result(self, prefix: str) -> dict[str, float]:
        squared, absolute, total, total_sq, rows = self.sums
        n = max(rows, 1)
        variance = total_sq / n - (total / n) ** 2
        return {
            f"{prefix}_rmse": float(np.sqrt(squared / n)),
            f"{prefix}_mae": float(absolute / n),
            f"{prefix}_r2": float(1 - (squared / n) / variance) if variance > 0 else float("nan"),
            f"{prefix}_rows": float(rows),
        }


TaskMetrics = BinaryMetrics | RegressionMetrics


def metrics_for(task: str, bins: int = AUC_BINS) -> TaskMetrics:
    """The accumulator for a task: classification or regression."""
    if task == "classification":
        return BinaryMetrics(bins)
    if task == "regression":
        return RegressionMetrics()
    raise ValueError(f"task {task!r} is unknown; known: classification, regression")


def metrics_from_vector(task: str, vector: np.ndarray) -> TaskMetrics:
    return (BinaryMetrics if task == "classification" else RegressionMetrics).from_vector(vector)
