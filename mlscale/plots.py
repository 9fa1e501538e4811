"""Pictures a person would rather look at than read: training curves, reliability, search progress."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mlscale.direction import better


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


def optimization_history(values: list[float | None], path: str | Path, metric: str, mode: str,
                         title: str = "optimization history") -> Path:
    """Each trial's best value in the order trials finished, and the best so far."""
    figure, axis = plt.subplots(figsize=(7, 4))
    points = [(i + 1, v) for i, v in enumerate(values) if v is not None]
    running, best = [], None
    for _, value in points:
        best = value if best is None or better(value, best, mode) else best
        running.append(best)
    axis.scatter([i for i, _ in points], [v for _, v in points], label="trial", color="tab:blue")
    axis.step([i for i, _ in points], running, where="post", color="tab:red", label="best so far")
    axis.set(xlabel="trial (in order finished)", ylabel=metric, title=title)
    axis.legend()
    return _save(figure, path)


def budget_curves(curves: dict[str, list[list[tuple[float, float]]]], path: str | Path, metric: str,
                  title: str = "best value against budget") -> Path:
    """Best metric so far against trial-epochs spent: one line per seed, one colour per method."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for colour, (method, runs) in zip(("tab:red", "tab:blue", "tab:green", "tab:purple"), curves.items(),
                                      strict=False):
        for index, curve in enumerate(runs):
            axis.step([s for s, _ in curve], [b for _, b in curve], where="post", color=colour, alpha=0.8,
                      label=method if index == 0 else None)
    axis.set(xlabel="trial-epochs spent", ylabel=f"best {metric}", title=title)
    axis.legend()
    return _save(figure, path)


def bar_chart(values: dict[str, float], path: str | Path, xlabel: str, title: str) -> Path:
    """Horizontal bars, largest on top (e.g. parameter importances)."""
    ordered = sorted(values.items(), key=lambda item: item[1])
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(ordered) + 1.5))
    axis.barh([name for name, _ in ordered], [value for _, value in ordered], color="tab:blue")
    axis.set(xlabel=xlabel, title=title)
    return _save(figure, path)


def pareto_plot(points: list[tuple[float, float]], front: list[tuple[float, float]], path: str | Path,
                cost: str, metric: str, title: str = "Pareto front") -> Path:
    """Every trial as (cost, metric), the non-dominated ones joined."""
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.scatter([c for c, _ in points], [m for _, m in points], color="tab:grey", label="trial")
    axis.plot([c for c, _ in front], [m for _, m in front], marker="o", color="tab:red", label="Pareto front")
    axis.set(xlabel=cost, ylabel=metric, xscale="log", title=title)
    axis.legend()
    return _save(figure, path)


def drift_over_time(starts: list[str], psi: dict[str, list[float | None]], overall: list[float | None],
                    threshold: float, path: str | Path) -> Path:
    """PSI per feature and overall per window, with the threshold a window drifts past."""
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for name, values in psi.items():
        axis.plot(starts, [float("nan") if v is None else v for v in values], marker=".", alpha=0.6, label=name)
    axis.plot(starts, [float("nan") if v is None else v for v in overall], marker="o", color="black", linewidth=2,
              label="overall (mean)")
    axis.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    axis.set(xlabel="window", ylabel="PSI against training", title="drift of live traffic")
    axis.tick_params(axis="x", rotation=30)
    axis.legend(fontsize="small", ncol=2)
    return _save(figure, path)


def metric_over_time(starts: list[str], values: list[float | None], metric: str, path: str | Path,
                     others: dict[str, list[float | None]] | None = None,
                     marks: dict[str, str] | None = None) -> Path:
    """A live metric per window (others: more series on the same windows, e.g. a retrained model's), with the
    windows where something happened (marks: window -> what) shown as vertical lines."""
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for name, series in {metric: values, **(others or {})}.items():
        axis.plot(starts, [float("nan") if v is None else v for v in series], marker="o", label=name)
    for start, what in (marks or {}).items():
        if start in starts:
            axis.axvline(starts.index(start), color="tab:red", linestyle=":", alpha=0.7)
            axis.annotate(what, (starts.index(start), axis.get_ylim()[1]), fontsize="small", rotation=90,
                          va="top", ha="right")
    axis.set(xlabel="window", ylabel=metric, title=f"{metric} per window of live traffic")
    axis.tick_params(axis="x", rotation=30)
    axis.legend(fontsize="small")
    return _save(figure, path)
