"""The score stage: batch inference with a registered model over the configured source, tracked in MLflow."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlscale.config import PipelineConfig
from mlscale.data.prepare import REPORT_FILE
from mlscale.data.validation import ValidationReport
from mlscale.errors import ValidationFailed
from mlscale.scoring import ScoredData, score_source
from mlscale.stages.run_records import log_validation

log = logging.getLogger(__name__)


def score_stage(config: PipelineConfig, model_uri: str | None = None, force: bool = False) -> ScoredData:
    """Score every row of the data section's source with a registered model (streaming; invalid rows quarantined
    with their reasons); a rerun over the same source with the same version returns the committed scores.

    Args:
        config: the pipeline config (data: what to score; score: where and which columns; serve.variant: fp32/int8).
        model_uri: models:/name@alias or models:/name/<version>; None: score.model, else the serving alias.
        force: score again even when the committed output matches.

    Returns:
        Where the scores are, the exact version that made them, and the row counts.

    Raises:
        ValidationFailed: more rows broke the rules than validation.max_quarantine_fraction allows.
        NothingToServe: the alias points at no version.
    """
    uri = model_uri or config.score.model or config.serving_uri
    try:
        scored = score_source(config, uri, config.serve.variant, force)
    except ValidationFailed as failure:
        log_validation(config, failure.report, "FAILED", stage="score",
                       tags={"mlscale.model": uri})
        raise
    report_path = Path(scored.path) / REPORT_FILE
    report = ValidationReport.from_dict(json.loads(report_path.read_text()))
    log.info("%s%s", report.render(), " (cached)" if scored.cached else "")
    if not scored.cached:
        log_validation(config, report, "FINISHED", stage="score",
                       tags={"mlscale.model": uri, "mlscale.model_version": scored.model_version,
                             "mlscale.variant": scored.variant, "mlscale.scores": scored.path})
    return scored
