"""The retraining loop's first half: the monitor submits the retrain job through the Jobs API, follows it to its
end (or stops it at monitor.retrain.timeout_s, ending any canary it left) and records what happened."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
import uuid

from mlscale.config import PipelineConfig
from mlscale.logs import summary_from_logs
from mlscale.monitor.retrain import RetrainDecision, retrain_config
from mlscale.submit import jobs_address
from mlscale.tracking import config_by_reference

log = logging.getLogger(__name__)
JOB_POLL_S = 0.5  # a status read is one small HTTP call: a retrain that ends is noticed within half a second


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
    client = JobSubmissionClient(jobs_address(settings.jobs_address, connected=True,
                                              setting="monitor.retrain.jobs_address"))
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
        time.sleep(JOB_POLL_S)
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
