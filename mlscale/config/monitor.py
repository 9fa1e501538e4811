"""Watching the service and retraining: the monitor and replay sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mlscale.config.base import StrictModel


class LabelsConfig(StrictModel):
    """Where labels that arrive after the predictions are (for flights: the arrival delay, hours later)."""

    path: str = Field(..., description="A parquet file or folder (local or a pyarrow filesystem URI), or a .csv.")
    on: list[str] = Field(["request_id"], min_length=1,
                          description="Columns both the labels and the prediction log carry: the request id the "
                                      "service returned (with record_index for multi-record requests), or a key.")
    column: str | None = Field(None, description="The label column; None: data.label.")


class RetrainConfig(StrictModel):
    """The retraining loop: what the monitor does when the newest judged window drifts or decays."""

    enabled: bool = Field(False, description="Off: the monitor reports and logs the decision it would take.")
    on: list[Literal["drift", "decay"]] = Field(["drift", "decay"], min_length=1, description="What triggers.")
    train_windows: int = Field(3, ge=1, description="Recent labelled windows the new model trains on.")
    val_windows: int = Field(1, ge=1, description="The windows after those: early stopping and checkpoints.")
    test_windows: int = Field(
        1, ge=1, description="The newest labelled windows: the new model is judged against the champion on them.")
    min_delta: float = Field(
        0.0, ge=0, description="How much better than the champion the new model must be on the newest labelled "
                               "data to start a canary (it must pass its behavioural checks too).")
    cooldown_s: float = Field(86_400.0, ge=0, description="No retrain starts sooner than this after the last one.")
    max_per_day: int = Field(2, ge=1, description="At most this many retrains start in any 24 hours.")
    jobs_address: str | None = Field(
        None, description="The Jobs API (dashboard) URL the retrain job is submitted to; None: "
                          "RAY_API_SERVER_ADDRESS, else the connected cluster's dashboard.")
    wait: bool = Field(True, description="Follow the retrain job to its end and record its outcome (an embedded "
                                         "local Ray lives only as long as the monitor that started it).")
    timeout_s: float = Field(3600.0, gt=0, description="How long a followed retrain job may take.")
    search_trials: int = Field(
        0, ge=0, description="More than 0: the retrain is a small search (the tune section's space, scheduler and "
                             "sampler, this many trials) instead of one training run; its winner is judged.")


class MonitorConfig(StrictModel):
    """Drift and decay of live traffic (the prediction log) against the serving model (`mlscale monitor`), and the
    retraining they trigger."""

    window: Literal["hour", "day", "column", "count"] = Field(
        "day", description="How the logged requests are cut into windows: by the time they were served, by the "
                           "value of a logged column (window_column, e.g. the flights' month: event time), or every "
                           "window_rows logged rows in the order they were served.")
    window_column: str | None = Field(None, description="window: column: the logged input column to cut by.")
    window_rows: int = Field(10_000, ge=1, description="window: count: rows per window.")
    min_window_rows: int = Field(100, ge=1, description="Smaller windows are reported as too small, not judged.")
    drift_threshold: float = Field(
        0.2, gt=0, description="A window drifts when the mean PSI over the features passes this (0.1 moderate, "
                               "0.25 large by the usual reading).")
    feature_threshold: float = Field(0.25, gt=0, description="A feature drifts when its PSI passes this ...")
    feature_p_value: float = Field(
        0.01, gt=0, le=1, description="... and its test (KS or chi-square) puts the difference beyond sampling noise "
                                      "at this level: PSI alone grows with the number of categories over the rows "
                                      "in a window, so a small window of a many-valued column can pass the PSI "
                                      "threshold by chance (1 = PSI alone). Prediction drift uses the same rule.")
    prediction_threshold: float = Field(
        0.25, gt=0, description="The predictions drift when their PSI against the first judged window of the same "
                                "version passes this and its test rejects at feature_p_value (reported; a trigger only "
                                "through drift or decay).")
    labels: LabelsConfig | None = Field(None, description="Set: live performance per window, and decay.")
    max_metric_drop: float = Field(
        0.03, ge=0, description="A window decays when the model's live metric (train.metric, on the window's "
                                "labelled rows) is worse than its test metric by more than this.")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    @model_validator(mode="after")
    def _window_column(self) -> MonitorConfig:
        if self.window == "column" and not self.window_column:
            raise ValueError("monitor.window_column is required when monitor.window is 'column'")
        return self


class ReplayConfig(StrictModel):
    """`mlscale replay`: later windows of the source (e.g. months) sent through the HTTP service as live traffic,
    one window after another, labels arriving `label_lag` windows late, the monitor run after each window."""

    windows: list[Any] = Field(default_factory=lambda: list(range(5, 13)), min_length=1,
                               description="Values of monitor.window_column to replay, in order.")
    rows_per_window: int = Field(1000, ge=1, description="Rows drawn (seeded) from each window and sent.")
    label_lag: int = Field(1, ge=0, description="A window's labels arrive this many windows later.")
    clients: int = Field(4, ge=1, description="Concurrent HTTP clients.")
    records_per_request: int = Field(50, ge=1)
    seed: int = 0
