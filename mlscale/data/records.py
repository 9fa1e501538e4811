"""Rows as JSON has them: what a client sends to the service, and what tests and checks compare with batch output."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray.data


def json_value(value: Any) -> Any:
    """A dataset value as JSON has it: NumPy scalars as Python numbers, NaN as null (JSON has no NaN).

    Args:
        value: one cell of a dataset row.

    Returns:
        A value `json.dumps` writes as the service reads it.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def held_out_records(dataset: ray.data.Dataset, rows: int) -> list[dict[str, Any]]:
    """The first rows of a dataset as JSON-ready records (the request bodies a client would send).

    Args:
        dataset: e.g. `prepared.read("test")`.
        rows: how many.

    Returns:
        One dict per row, values converted by `json_value`.
    """
    return [{name: json_value(value) for name, value in row.items()} for row in dataset.limit(rows).take_all()]
