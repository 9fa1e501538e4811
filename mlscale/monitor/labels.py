"""Labels that arrive after the predictions (for flights: the arrival delay, hours later), joined to the prediction
log by the request id the service logged (or another column both carry), and the model's live performance per
window measured on them with the training metrics' own code."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    # a hash lookup of each logged row's key among the labels' (not Table.join: Acero's hash join crashed the
    # process with a segfault in a CI run, pyarrow 25.0.1); a null key matches nothing, a repeated label key
    # keeps its first label
    position = pc.index_in(_join_key(log, keys), value_set=_join_key(right, keys), skip_nulls=True)
    found = pc.is_valid(position)
    rows = log.filter(found)
    if label_column in rows.column_names:  # the labels' value wins over anything the log carried by that name
        rows = rows.drop_columns([label_column])
    return rows.append_column(label_column, right.column(label_column).take(position.filter(found)))


def _join_key(table: pa.Table, keys: list[str]) -> pa.ChunkedArray:
    """One string per row from the key columns (null when any part is null)."""
    parts = [pc.cast(table.column(name), pa.string()) for name in keys]
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\x1f")


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
