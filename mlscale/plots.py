"""Pictures a person would rather look at than read: the training curve and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(figure: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def training_curve(history: list[dict[str, float]], path: str | Path, metric: str = "val_auc",
                   title: str = "training curve") -> Path:
    """Loss (train and validation, when there is one) and the validation metric per evaluation, against epochs."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    if all("val_log_loss" in row for row in history):
        loss_axis.plot(epochs, [row["val_log_loss"] for row in history], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_axis.legend()
    metric_axis.plot(epochs, [row[metric] for row in history], marker="o", color="tab:green")
    metric_axis.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    figure.suptitle(title)
    return _save(figure, path)


def reliability_diagram(table: dict[str, list[float | None]], path: str | Path, ece: float,
                        title: str = "reliability") -> Path:
    """Observed positive rate against mean predicted probability per score bin; the diagonal is perfect."""
    filled = [i for i, rows in enumerate(table["rows"]) if rows]
    predicted = [table["predicted"][i] for i in filled]
    observed = [table["observed"][i] for i in filled]
    figure, (curve_axis, count_axis) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    curve_axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    curve_axis.plot(predicted, observed, marker="o", label=f"model (ECE {ece:.4f})")
    curve_axis.set(ylabel="observed positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    curve_axis.legend()
    bins = len(table["rows"])
    count_axis.bar([(i + 0.5) / bins for i in range(bins)], table["rows"], width=1 / bins, color="tab:blue")
    count_axis.set(xlabel="predicted probability", ylabel="rows", yscale="log")
    return _save(figure, path)
