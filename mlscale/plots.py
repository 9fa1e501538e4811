"""Pictures a person would rather look at than read: the training curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curve(history: list[dict[str, float]], path: str | Path, title: str = "training curve") -> Path:
    """Loss (train and validation) and validation ROC AUC per epoch, side by side."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_axis.plot(epochs, [row["val_log_loss"] for row in history], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="log loss", title="loss")
    loss_axis.legend()
    auc_axis.plot(epochs, [row["val_auc"] for row in history], marker="o", color="tab:green")
    auc_axis.set(xlabel="epoch", ylabel="ROC AUC", title="validation ROC AUC")
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
