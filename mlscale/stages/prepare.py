"""The prepare stage: read, validate with quarantine, split and write, then print and track the report."""

from __future__ import annotations

import logging

from mlscale.config import PipelineConfig
from mlscale.data.prepare import PreparedData, prepare
from mlscale.errors import ValidationFailed
from mlscale.features.featureset import FitStatistics
from mlscale.stages.run_records import log_validation

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
