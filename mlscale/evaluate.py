"""Batch scoring and evaluation through the bundle, streaming with map_batches.

This is the offline half of "offline prediction == online prediction": the predictor calls the same
Bundle.predict_columns that the Serve replica calls.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray.data

from mlscale.registry.bundle import Bundle
from mlscale.registry.store import load_bundle
from mlscale.train.metrics import BinaryMetrics

PREDICTION_COLUMN = "probability"


class BundlePredictor:
    """A map_batches actor: loads the bundle once, appends the predicted probability to each batch."""

    def __init__(self, model_uri: str, tracking_uri: str | None = None) -> None:
        self.bundle: Bundle = load_bundle(model_uri, tracking_uri)

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = {name: batch.column(name) for name in self.bundle.input_columns}
        return batch.append_column(PREDICTION_COLUMN, pa.array(self.bundle.predict_columns(columns)))


def score(dataset: ray.data.Dataset, model_uri: str, tracking_uri: str | None = None,
          actors: int = 1) -> ray.data.Dataset:
    return dataset.map_batches(
        BundlePredictor,
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri},
        batch_format="pyarrow",
        batch_size=4096,
        compute=ray.data.ActorPoolStrategy(size=actors),
    )


def _partial_metrics(batch: pa.Table, label: str, threshold: float) -> dict[str, list]:
    metrics = BinaryMetrics()
    labels = (batch.column(label).to_numpy(zero_copy_only=False) >= threshold).astype(np.float64)
    metrics.update(batch.column(PREDICTION_COLUMN).to_numpy(zero_copy_only=False), labels)
    return {"histograms": [metrics.histograms.ravel()], "loss_sum": [metrics.loss_sum], "rows": [metrics.rows]}


def evaluate(scored: ray.data.Dataset, label: str, threshold: float, prefix: str = "test") -> dict[str, float]:
    """Metrics over a scored dataset; partial statistics per batch, summed on the driver."""
    total = BinaryMetrics()
    partials = scored.map_batches(_partial_metrics, fn_kwargs={"label": label, "threshold": threshold},
                                  batch_format="pyarrow", batch_size=None)
    for row in partials.iter_rows():
        part = BinaryMetrics()
        part.histograms = np.asarray(row["histograms"]).reshape(total.histograms.shape)
        part.loss_sum, part.rows = float(row["loss_sum"]), int(row["rows"])
        total = total.merge(part)
    return total.result(prefix)
