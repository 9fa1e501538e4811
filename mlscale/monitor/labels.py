"""Labels that arrive after the predictions (for flights: the arrival delay, hours later), joined to the prediction
log by the request id the service logged (or another column both carry), and the model's live performance per
window measured on them with the training metrics' own code."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mlscale.features.featureset import label_values
from mlscale.train.metrics import metrics_for


def join_labels(log: pa.Table, labels: pa.Table, on: list[str], label_column: str) -> pa.Table:
    """The logged rows that have a label, with it (an inner join; a label for a request never logged is dropped,
    a logged request without a label yet stays out until it has one).

    Raises:
        KeyError: a join column or the label column is missing from one side, named.
    """
    for name in on:
        for side, table in (("prediction log", log), ("labels", labels)):
            if name not in table.column_names:
                raise KeyError(f"join column {name!r} is not in the {side} (it has {table.column_names})")
    if label_column not in labels.column_names:
        raise KeyError(f"label column {label_column!r} is not in the labels (they have {labels.column_names})")
    keys = list(on)
    if keys == ["request_id"] and "record_index" in labels.column_names:
        keys.append("record_index")  # a request of several records: each labelled by its position in it
    right = labels.select([*keys, label_column])
    for name in keys:  # labels written by another tool: the log's key types win (e.g. int64 vs int32 positions)
        wanted = log.schema.field(name).type
        if right.schema.field(name).type != wanted:
            right = right.set_column(right.schema.get_field_index(name), name, right.column(name).cast(wanted))
    return log.join(right, keys=keys, join_type="inner")


def window_performance(rows: pa.Table, label: dict[str, Any], label_column: str) -> dict[str, float]:
    """The serving model's metrics on the labelled rows of one window (AUC, log loss, ECE; RMSE, MAE for
    regression), computed by the same code as training's validation metrics."""
    task = label.get("task", "classification")
    values = rows.column(label_column).to_numpy(zero_copy_only=False).astype(np.float64)
    targets = label_values(values, label.get("threshold") if task != "regression" else None)
    predictions = rows.column("prediction").to_numpy(zero_copy_only=False).astype(np.float64)
    metrics = metrics_for(task)
    metrics.update(predictions, targets)
    return metrics.result("live")
