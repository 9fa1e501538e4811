"""The retraining loop's second half (the first, submitting it, is mlscale.monitor.jobs): the retrain job runs the same
pipeline on the recent labelled windows, judges the new version against the champion on the newest of them, and
when it qualifies releases it through a canary that promotes or rolls back by itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlscale.config import PipelineConfig
from mlscale.monitor.retrain import decision_log
from mlscale.stages.common import start

log = logging.getLogger(__name__)


@dataclass
class RetrainResult:
    version: str
    judged: str
    qualified: bool
    delta: float | None  # its metric minus the champion's on the test windows
    metrics: dict[str, float]
    release: dict[str, Any] | None

    def summary(self) -> dict[str, Any]:
        release = self.release or {}
        return {"model_version": self.version, "judged": self.judged, "qualified": self.qualified, "delta": self.delta,
                **self.metrics, "release": release.get("action"), "action": release.get("action"),
                "challenger_version": release.get("challenger_version"),
                "reasons": release.get("reasons", []), "serving_version": release.get("serving_version")}


def retrain_stage(config: PipelineConfig) -> RetrainResult:
    """Prepare and train (or search, with monitor.retrain.search_trials) on the config's split (the monitor's
    retrain config), judge against the champion on its test windows (tracking.promotion is canary here, whatever the
    config says), and canary the new version when it qualifies. A failure anywhere leaves the champion serving.

    Returns:
        The new version, the judgement and the release decision (None: it did not qualify).
    """
    from mlscale.stages.prepare import prepare_stage
    from mlscale.stages.release import canary_stage
    from mlscale.stages.train import train_stage

    tracking = config.tracking.model_copy(update={"promotion": "canary"})  # only a canary moves the alias here
    config = config.model_copy(update={"tracking": tracking})
    start(config)
    prepared = prepare_stage(config)
    trials = config.monitor.retrain.search_trials
    if trials:  # a small search; its winner is judged the same way
        from mlscale.stages.tune import tune_stage

        config = config.model_copy(update={"tune": config.tune.model_copy(update={"num_trials": trials})})
        trained = tune_stage(config, prepared).trained
    else:
        trained = train_stage(config, prepared)
    qualified = bool(trained.decision.qualified) or trained.promoted
    release = None
    if qualified and not trained.promoted:  # promoted: there was no champion to canary against
        release = canary_stage(config, trained.version).summary()
    result = RetrainResult(trained.version, trained.decision.reason, qualified, trained.decision.delta,
                           {k: v for k, v in trained.test_metrics.items() if k.startswith("test_")}, release)
    decision_log(config).append({"event": "retrain", "time": datetime.now(UTC).isoformat(),
                                 "version": result.version, "judged": result.judged,
                                 "release": release.get("action") if release else None,
                                 "split": config.split.model_dump(mode="json")})
    return result
