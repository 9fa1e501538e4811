"""Whether higher or lower is better for a metric, decided in one place: the name says it (losses and errors go
down, AUC and R^2 go up), and every comparison of two values of one metric asks `gain` which way is better."""

from __future__ import annotations

from typing import Literal, TypeVar

Mode = Literal["max", "min"]
LOWER_IS_BETTER = ("loss", "rmse", "mae", "ece")
Value = TypeVar("Value")


def mode_of(metric: str) -> Mode:
    """max for a metric where higher is better (val_auc, test_r2), min for a loss or an error (val_rmse, log_loss)."""
    return "min" if any(part in metric for part in LOWER_IS_BETTER) else "max"


def gain(new: float, old: float, mode: str) -> float:
    """How much `new` beats `old`: positive when better, whichever way the metric goes."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    return new - old if mode == "max" else old - new


def better(new: float, old: float, mode: str) -> bool:
    return gain(new, old, mode) > 0


def signed(value: Value, mode: str) -> Value:
    """The value as a score where more is better (the key for max(), idxmax(), a descending sort)."""
    return value if mode == "max" else -value  # type: ignore[operator]
