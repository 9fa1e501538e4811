"""What the label means, fixed at training time and stored in the bundle: a threshold for classification, the
scale of the target for regression (training learns a standardized target; serving undoes it)."""

from __future__ import annotations

from typing import Any

import ray.data
from ray.data.aggregate import Mean, Std

from mlscale.config import DataConfig


def label_spec(data: DataConfig, train: ray.data.Dataset) -> dict[str, Any]:
    """The label spec of a dataset: classification reads only the config, regression one pass over train."""
    column = data.label
    if data.task == "classification":
        threshold = data.label_threshold
        return {"task": "classification", "column": column, "threshold": threshold,
                "meaning": f"{column} >= {threshold:g}"}
    stats = train.aggregate(Mean(column, alias_name="mean"), Std(column, alias_name="std"))  # one pass, not two
    mean, std = float(stats["mean"]), float(stats["std"])
    return {"task": "regression", "column": column, "mean": mean, "std": std if std > 0 else 1.0,
            "meaning": f"{column} (predicted value)"}


def target_stats(label: dict[str, Any]) -> tuple[float, float] | None:
    """Regression trains on a standardized target: the label's mean and std; None for classification."""
    return (label["mean"], label["std"]) if label["task"] == "regression" else None


def label_scale(label: dict[str, Any]) -> float:
    """The size of one unit of prediction: 1 for a probability, the label's standard deviation for regression.
    Tolerances between two prediction paths are stated in this unit, so they mean the same for any dataset."""
    return float(label.get("std", 1.0)) if label.get("task") == "regression" else 1.0
