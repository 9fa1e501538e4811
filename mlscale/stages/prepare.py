"""The prepare stage: read, validate with quarantine, split and write, then print and track the report."""

from __future__ import annotations

import logging
import re

import mlflow

from mlscale.config import PipelineConfig
from mlscale.data.prepare import REPORT_FILE, PreparedData, prepare
from mlscale.data.validation import ValidationReport
from mlscale.errors import ValidationFailed
from mlscale.features.featureset import FitStatistics
from mlscale.tracking import stage_run, tracking_client

log = logging.getLogger(__name__)


def prepare_stage(config: PipelineConfig) -> PreparedData:
    """Prepare the configured source (or reuse the committed preparation of the same source, config and code),
    print the validation report and record it in an MLflow run.

    Args:
        config: the pipeline config; call `mlscale.start(config)` first.

    Returns:
        Where the splits were written, their row counts and the quarantine reasons.

    Raises:
        ValidationFailed: more rows broke the rules than `validation.max_quarantine_fraction` allows.
        SourceError, SchemaError: the source cannot be read, or lacks declared columns.
        ExpressionError: a `validation.checks` expression is invalid.
        ConfigError: the split names a column the schema does not have.
    """
    try:
        prepared = prepare(config, train_summary=FitStatistics(config.features))  # the fit needs no pass
    except ValidationFailed as failure:
        log_validation(config, failure.report, "FAILED")
        raise
    report = prepared.report()
    log.info("%s%s", report.render(), " (cached)" if prepared.cached else "")
    if not prepared.cached:
        log_validation(config, report, "FINISHED")
    return prepared


def log_validation(config: PipelineConfig, report: ValidationReport, status: str,
                   stage: str = "prepare", tags: dict[str, str] | None = None) -> None:
    """A validating stage's MLflow run: the ValidationReport as an artifact and its counts as metrics."""
    with stage_run(f"{config.name}-{stage}") as run:
        mlflow.set_tags({"mlscale.stage": stage, "mlscale.config_hash": config.fingerprint(),
                         "mlscale.validation_passed": str(report.passed).lower(), **(tags or {})})
        mlflow.log_metrics({"rows_read": float(report.rows_read), "rows_quarantined": float(report.rows_quarantined),
                            "quarantine_fraction": report.quarantine_fraction,
                            **{f"rule_failed.{rule}": float(n) for rule, n in _metric_safe(report).items()}})
        mlflow.log_dict(report.to_dict(), f"data/{REPORT_FILE}")
    if status != "FINISHED":
        tracking_client(config.tracking_uri).set_terminated(run.info.run_id, status)


def _metric_safe(report: ValidationReport) -> dict[str, int]:
    """MLflow metric names allow letters, digits, _ - . / and space: rule ids like unique(a,b) are rewritten."""
    return {re.sub(r"[^A-Za-z0-9_\-./ ]", "_", rule): n for rule, n in report.counts_by_rule().items()}
