"""Batch inference: a registered model over a source, streaming, with the same validation and bundle code as
serving and preparation.

Rows are validated by the rules that guard the model's inputs (each input column's type, nulls, range, allowed values
and pattern, as serving checks them), plus the key columns and the config's cross-column checks over those columns;
a row that breaks one is quarantined with the rules and a readable reason, exactly as `prepare` does. Valid rows are
scored in a Ray Data actor pool through `Bundle.predict_columns`, the function the Serve replicas call. Output:
`part=scored` (the chosen columns, the prediction, the model version) and `part=quarantine` (every validated column
and the reasons), written to a staging folder and committed by rename; a rerun with the same source, model version,
settings and code returns the committed result without scoring again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from mlscale.caching import cache_key, code_hash
from mlscale.config import PipelineConfig, ValidationConfig
from mlscale.data.expressions import columns_of
from mlscale.data.parquet import read_parquet
from mlscale.data.prepare import REPORT_FILE, count_rows, judge_output, schema_for, source_rules
from mlscale.data.sources import read_source
from mlscale.data.storage import atomic_directory, refuse_foreign, set_aside
from mlscale.data.validation import REASON_COLUMN, RULES_COLUMN, build_rules, validate_batch
from mlscale.errors import ConfigError, ValidationFailed
from mlscale.registry.bundle import Bundle
from mlscale.registry.store import load_bundle, pinned_uri, uri_version
from mlscale.schema import ColumnSpec

PREDICTION_COLUMN = "prediction"
VERSION_COLUMN = "model_version"
PART_COLUMN = "part"
PARTS = ("scored", "quarantine")
MANIFEST_FILE = "_scores.json"


@dataclass
class ScoredData:
    """Where the scores went, what scored them, and the reconciled row counts."""

    path: str
    model_uri: str
    served_uri: str
    model_version: str
    variant: str
    rows_read: int
    counts: dict[str, int]
    columns: list[str]
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    cache_key: str = ""
    cached: bool = False

    def read(self, part: str = "scored") -> ray.data.Dataset:
        return read_parquet(str(Path(self.path) / f"{PART_COLUMN}={part}"))

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "cached"}, indent=2)

    def summary(self) -> dict[str, Any]:
        """What `mlscale score` and the score job print: reconciled counts, the model that scored, where."""
        return {"cached": self.cached, "model_uri": self.model_uri, "model_version": self.model_version,
                "variant": self.variant, "rows_read": self.rows_read,
                **{f"{part}_rows": count for part, count in self.counts.items()}, "scores_path": self.path,
                "quarantine_reasons": self.quarantine_reasons}


def scoring_specs(config: PipelineConfig, bundle: Bundle, columns: list[str]) -> list[ColumnSpec]:
    """The model's input columns as its bundle declares them (serving's rules), then the other kept columns as the
    pipeline's schema declares them."""
    specs = list(bundle.input_schema)
    declared = {spec.name: spec for spec in schema_for(config)}
    for name in columns:
        if name in bundle.input_columns:
            continue
        if name not in declared:
            raise ConfigError(f"score.columns: {name!r} is neither a model input nor a column of the data's schema "
                              f"({', '.join(declared)})")
        specs.append(declared[name])
    return specs


def scoring_validation(config: PipelineConfig, specs: list[ColumnSpec]) -> ValidationConfig:
    """The validation section narrowed to the scored columns: cross-column checks and the key over them only (the
    new rows need not carry the label, nor columns the model does not read)."""
    names = {spec.name for spec in specs}
    return config.validation.model_copy(update={
        "checks": [check for check in config.validation.checks if set(columns_of(check.expr)) <= names],
        "unique": config.validation.unique if set(config.validation.unique or []) <= names else None})


def kept_columns(config: PipelineConfig, bundle: Bundle) -> list[str]:
    """score.columns, else the rows' key (validation.unique), else every model input."""
    return list(config.score.columns or config.validation.unique or bundle.input_columns)


class BatchScorer:
    """map_batches actor: scores the valid rows of a validated batch, leaves the quarantined ones unscored, and
    shapes both into the output's one schema (kept columns, prediction, version, reasons, part)."""

    def __init__(self, served_uri: str, tracking_uri: str | None, variant: str, kept: list[str], version: str
                 ) -> None:
        self.bundle = load_bundle(served_uri, tracking_uri).with_variant(variant)
        self.kept = kept
        self.version = version

    def __call__(self, batch: pa.Table) -> pa.Table:
        bad = batch.column(RULES_COLUMN).is_valid().to_numpy(zero_copy_only=False)
        predictions = np.full(batch.num_rows, np.nan)
        valid = np.flatnonzero(~bad)
        if valid.size:
            rows = batch.take(pa.array(valid))
            predictions[valid] = self.bundle.predict_columns(
                {name: rows.column(name) for name in self.bundle.input_columns})
        bad_array = pa.array(bad)
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        for name in batch.column_names:
            if name in (RULES_COLUMN, REASON_COLUMN):
                continue
            column = batch.column(name)
            # a scored row keeps only the chosen columns (null costs nothing in parquet); a quarantined row keeps all
            columns[name] = column if name in self.kept else pc.if_else(bad_array, column,
                                                                        pa.nulls(batch.num_rows, column.type))
        columns[PREDICTION_COLUMN] = pa.array(predictions, mask=bad)
        columns[VERSION_COLUMN] = pa.array([self.version] * batch.num_rows, pa.string())
        columns[RULES_COLUMN] = batch.column(RULES_COLUMN)
        columns[REASON_COLUMN] = batch.column(REASON_COLUMN)
        columns[PART_COLUMN] = pa.array(np.where(bad, "quarantine", "scored"), pa.string())
        return pa.table(columns)


def scores_dir(config: PipelineConfig) -> Path:
    return Path(config.score.output).expanduser().resolve() if config.score.output else (
        config.storage.root_path / "scores" / config.name)


def _committed(target: Path, key: str) -> ScoredData | None:
    manifest = target / MANIFEST_FILE
    if not manifest.exists():
        return None
    scored = ScoredData(**json.loads(manifest.read_text()))
    if scored.cache_key != key:
        return None
    scored.cached = True
    return scored


def score_source(config: PipelineConfig, model_uri: str, variant: str = "fp32", force: bool = False) -> ScoredData:
    """Score the configured source with a registered model; see the module docstring for what is written where.

    Raises:
        ValidationFailed: more rows broke the rules than validation.max_quarantine_fraction allows (the output is
            kept aside as `<output>.rejected` with its report; nothing is committed).
        ConfigError: score.columns names an unknown column, or score.output is something other than a scoring
            output (it is never replaced).
    """
    served_uri = pinned_uri(model_uri, config.tracking_uri)
    bundle = load_bundle(served_uri, config.tracking_uri)
    kept = kept_columns(config, bundle)
    specs = scoring_specs(config, bundle, kept)
    settings = scoring_validation(config, specs)
    build_rules(specs, settings, [])  # a bad expression fails before any data is read
    source = read_source(config.data, schema_for(config), config.storage.root_path / "cache")
    version = uri_version(served_uri)
    key = cache_key(source.fingerprint, {"model": served_uri, "variant": variant, "kept": kept,
                                         "specs": [spec.model_dump() for spec in specs],
                                         "validation": settings.model_dump(mode="json")},
                    code_hash("data", "schema.py", "scoring.py", "registry", "features", "models"))
    target = scores_dir(config)
    refuse_foreign(target, MANIFEST_FILE, "score.output")
    if not force and (hit := _committed(target, key)) is not None:
        return hit
    with source.diagnosed():
        duplicates, rows_read, rules = source_rules(source, specs, settings)
        scored = source.dataset.map_batches(
            partial(validate_batch, specs=specs, rules=rules), batch_format="pyarrow", batch_size=None,
        ).map_batches(
            BatchScorer, fn_constructor_kwargs={"served_uri": served_uri, "tracking_uri": config.tracking_uri,
                                                "variant": variant, "kept": kept, "version": version},
            batch_format="pyarrow", batch_size=config.score.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=config.score.actors or max(
                1, int(ray.cluster_resources().get("CPU", 1)))),
        )
        with atomic_directory(target) as staging:
            scored.write_parquet(str(staging), partition_cols=[PART_COLUMN])
            counts = {part: count_rows(staging / f"{PART_COLUMN}={part}") for part in PARTS}
            report = judge_output(staging, staging / f"{PART_COLUMN}=quarantine", rows_read, counts,
                                  source.description, rules, settings, duplicates)
            if not report.passed:
                raise ValidationFailed(report, str(set_aside(staging, target) / REPORT_FILE))
            result = ScoredData(path=str(target), model_uri=model_uri, served_uri=served_uri, model_version=version,
                                variant=variant, rows_read=rows_read, counts=counts, columns=kept,
                                quarantine_reasons=report.counts_by_rule(), cache_key=key)
            (staging / MANIFEST_FILE).write_text(result.to_json())
    return result
