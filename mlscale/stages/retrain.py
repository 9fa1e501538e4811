"""The retraining loop's two halves: the monitor submits a retrain job through the Jobs API; the job runs the same
pipeline on the recent labelled windows, judges the new version against the champion on the newest of them, and
when it qualifies releases it through a canary that promotes or rolls back by itself."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlscale.config import PipelineConfig, SplitConfig
from mlscale.errors import ConfigError
from mlscale.logs import summary_from_logs
from mlscale.monitor.retrain import RetrainDecision
from mlscale.stages.common import start
from mlscale.tracking import config_by_reference

log = logging.getLogger(__name__)


def retrain_config(config: PipelineConfig, train: list[Any], val: list[Any], test: list[Any]) -> PipelineConfig:
    """The pipeline's own config over the recent windows: a time split on the window column, and the canary
    promotion policy (judged like if_better with the retrain margin; only the canary moves the alias)."""
    column = config.monitor.window_column
    if config.monitor.window != "column" or not column:
        raise ConfigError("monitor.retrain needs monitor.window: column (a logged time column such as the month, "
                          "which the retrain's time split selects its windows by)")
    split = SplitConfig(method="time", column=column, train=train, val=val, test=test)
    tracking = config.tracking.model_copy(update={"promotion": "canary",
                                                  "promotion_min_delta": config.monitor.retrain.min_delta})
    # the job runs in another working directory: a relative local storage root means this process's
    storage = config.storage.model_copy(update={"root": str(config.storage.root_path)})
    return config.model_copy(update={"split": split, "tracking": tracking, "storage": storage})


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
    from mlscale.stages.monitor import decision_log
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
    qualified = bool(trained.decision.get("qualified")) or trained.promoted
    release = None
    if qualified and not trained.promoted:  # promoted: there was no champion to canary against
        release = canary_stage(config, trained.version).summary()
    result = RetrainResult(trained.version, trained.decision.get("reason", ""), qualified,
                           trained.decision.get("delta"),
                           {k: v for k, v in trained.test_metrics.items() if k.startswith("test_")}, release)
    decision_log(config).append({"event": "retrain", "time": datetime.now(UTC).isoformat(),
                                 "version": result.version, "judged": result.judged,
                                 "release": release.get("action") if release else None,
                                 "split": config.split.model_dump(mode="json")})
    return result


def jobs_address(config: PipelineConfig) -> str:
    """Where the Jobs API is: the configured URL, RAY_API_SERVER_ADDRESS, or the connected cluster's dashboard."""
    explicit = config.monitor.retrain.jobs_address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if explicit:
        return explicit
    import ray._private.worker

    try:
        url = ray._private.worker.get_dashboard_url()
    except Exception:  # noqa: BLE001 - not connected: say what to configure
        url = None
    if not url:
        raise ConfigError("monitor.retrain.jobs_address is not set and the cluster has no dashboard (Jobs API) to "
                          "submit the retrain job to")
    return url if "://" in url else f"http://{url}"


def retrain_entrypoint(config: PipelineConfig) -> str:
    """The job's command: the retrain stage with the whole resolved config as section overrides, so the job needs
    no config file in a working_dir (only the installed mlscale the cluster's image carries). The command is shown
    by `ray job list` and the dashboard: every credential in it is a ${VAR} reference the job expands from the
    cluster's environment (tracking.config_by_reference), never its value."""
    sections = config_by_reference(config)
    overrides = " ".join(f"--set {shlex.quote(f'{name}={json.dumps(value)}')}" for name, value in sections.items())
    return f"python -m mlscale.entry retrain {overrides}"


def end_its_canary(config: PipelineConfig) -> str:
    """A stopped retrain job may have been in its canary (a stopped job runs no cleanup): end the app's canary
    leases, so the replicas route to the champion alone at their next report. Says what is true afterwards."""
    from mlscale.serve.ledger import end_leases

    try:
        end_leases(config.serve.app_name)
    except Exception as error:  # noqa: BLE001 - the lease runs out by itself: say when
        return (f"a canary it started loses its share within {config.serve.canary.lease_s:g} s, when its lease runs "
                f"out (the release ledger did not answer: {type(error).__name__}); the champion then serves alone")
    return "any canary it started was ended: the champion serves alone"


def submit_retrain(config: PipelineConfig, decision: RetrainDecision) -> None:
    """Submit the retrain job for the decision's windows (recording its id on the decision) and, when
    monitor.retrain.wait is on, follow it to its end and record the outcome. A job that fails leaves the champion
    serving; the outcome says so."""
    from ray.job_submission import JobSubmissionClient

    settings = config.monitor.retrain
    job_config = retrain_config(config, decision.train, decision.val, decision.test)
    client = JobSubmissionClient(jobs_address(config))
    decision.job_id = client.submit_job(
        entrypoint=retrain_entrypoint(job_config),
        submission_id=f"{config.name}-retrain-{uuid.uuid4().hex[:8]}",
        runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}},
        metadata={"mlscale.stage": "retrain", "mlscale.window": str(decision.window)},
    )
    log.info("retrain job %s submitted: %s", decision.job_id, "; ".join(decision.reasons))
    if not settings.wait:
        decision.outcome = "submitted"
        return
    deadline = time.monotonic() + settings.timeout_s
    status = client.get_job_status(decision.job_id)
    while not status.is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(decision.job_id)
            decision.outcome = f"stopped after {settings.timeout_s:g} s; {end_its_canary(config)}"
            return
        time.sleep(2.0)
        status = client.get_job_status(decision.job_id)
    logs = client.get_job_logs(decision.job_id)
    sys.stdout.write(logs[-4000:])
    summary = summary_from_logs(logs)
    if summary is None:
        decision.outcome = f"job {status.value}; the champion keeps serving"
        log.warning("retrain job %s ended %s; the champion keeps serving", decision.job_id, status.value)
        return
    decision.gain, decision.cost = summary.get("delta"), summary.get("cost")
    decision.outcome = f"v{summary['model_version']}: {summary['judged']}"
    if summary.get("release"):
        decision.outcome += f"; canary {summary['release']}: v{summary.get('serving_version')} serves"
