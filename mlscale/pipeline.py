"""The stages chained for the end-to-end run: prepare -> train + judge -> deploy -> served == batch check.

Nothing here but the order: each stage lives in mlscale.stages, so jobs, the CLI, notebooks and tests call the same
code, and stages run as separate jobs find each other's outputs through storage (prepared data) and MLflow (models).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow

from mlscale.config import PipelineConfig
from mlscale.data.prepare import PreparedData
from mlscale.promotion import require_served_version
from mlscale.stages.common import start, timed
from mlscale.stages.deploy import ServingCheck, deploy_stage, served_vs_batch
from mlscale.stages.judge import TrainedModel
from mlscale.stages.prepare import prepare_stage
from mlscale.stages.train import train_stage
from mlscale.tracking import stage_run


@dataclass
class PipelineResult:
    """Everything the end-to-end run produced, and how long each stage took."""

    prepared: PreparedData
    trained: TrainedModel
    endpoint: str
    check: ServingCheck
    seconds: dict[str, float] = field(default_factory=dict)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # per stage: mlscale.cost.StageCost

    def summary(self) -> dict[str, Any]:
        counts = self.prepared.counts
        return {
            "rows_read": self.prepared.rows_read,
            "rows_quarantined": counts["quarantine"],
            "train_rows": counts["train"],
            "val_rows": counts["val"],
            "test_rows": counts["test"],
            **self.trained.summary(),
            "endpoint": self.endpoint,
            "served_vs_batch_rows": self.check.rows,
            "served_vs_batch_max_abs_diff": self.check.max_abs_diff,
            "served_vs_batch_max_rel_diff": self.check.max_rel_diff,
            "cluster_cpu_s": round(sum(cost["cluster_cpu_s"] for cost in self.costs.values()), 1),
            "cluster_gpu_s": round(sum(cost["cluster_gpu_s"] for cost in self.costs.values()), 1),
        }

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary(), "stage_seconds": self.seconds, "stage_costs": self.costs,
                           "history": self.trained.history,
                           "quarantine_reasons": self.prepared.quarantine_reasons,
                           "test_metrics": self.trained.test_metrics, "slices": self.trained.slices,
                           "promotion": self.trained.decision.to_dict(), "counts": asdict(self.prepared)["counts"]},
                          indent=2, default=str)


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    """The whole pipeline on the configured cluster (or the embedded Ray): prepare, train, judge, deploy the
    champion and check that served predictions equal batch predictions.

    Args:
        config: the pipeline config (see `mlscale.load_config`).

    Returns:
        The prepared data, the trained and judged model, the endpoint, the serving check and stage timings.

    Raises:
        MlscaleError: any stage's error (ValidationFailed, SourceError, NothingToServe, ServingError, ...).
    """
    seconds: dict[str, float] = {}
    costs: dict[str, dict[str, float]] = {}
    with timed("start", seconds, costs):
        start(config)
    with stage_run(f"{config.name}-pipeline"):
        mlflow.set_tag("mlscale.stage", "pipeline")
        with timed("prepare", seconds, costs):
            prepared = prepare_stage(config)
        with timed("train", seconds, costs):
            trained = train_stage(config, prepared)
        mlflow.log_metrics({f"{k}_seconds": v for k, v in seconds.items()})
    require_served_version(config, trained.version, trained.decision.reason)
    with timed("deploy", seconds, costs):
        endpoint = deploy_stage(config, trained.model_uri)
    with timed("served vs batch", seconds, costs):
        check = served_vs_batch(config, prepared, trained.model_uri, endpoint)
    return PipelineResult(prepared=prepared, trained=trained, endpoint=endpoint, check=check, seconds=seconds,
                          costs=costs)
