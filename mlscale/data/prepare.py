"""The prepare stage: source -> validate (quarantine with the rules broken) -> split -> parquet, streaming.

Every input row lands in exactly one partition of the output (train, val, test, quarantine, or unused when its
time falls in no split); the counts are checked against an independent count of the source. The output goes to
`storage.prepared_uri` (a path, or object storage every node of a cluster reads), each preparation in a folder of
its own (`<name>/<version>`), and a manifest beside them names the committed one: on a local disk it is written to a
staging folder and renamed into place only when validation passes (otherwise kept aside as `<name>.rejected` with its
report); on object storage, which has no rename, it is written to its folder and the manifest, written last in one
PUT, commits it (a failed one stays where it was written, with its report). Either way the job fails with the
report. A committed version is never replaced under a job reading it (a retrain's prepare commits beside it);
versions older than `storage.prepared_retention_s` are deleted. A rerun with the same source, config and code
reuses the committed output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray.data

from mlscale.caching import cache_key, code_hash
from mlscale.config import ObjectStoreConfig, PipelineConfig, SplitConfig, ValidationConfig
from mlscale.data.flights import FLIGHTS_SCHEMA
from mlscale.data.parquet import read_parquet
from mlscale.data.sink import SummarizingParquetSink, TrainSummary
from mlscale.data.sources import Source, infer_schema, read_source, resolve
from mlscale.data.split import assign_splits, split_column
from mlscale.data.storage import as_uri, exists, is_local, read_text, set_aside, write_text
from mlscale.data.validation import (
    REASON_COLUMN,
    RULES_COLUMN,
    Rule,
    ValidationReport,
    build_rules,
    conform_rows,
    key_strings,
    require_columns,
    rule_partials,
    validate_batch,
)
from mlscale.errors import ConfigError, PreparedDataMissing, ValidationFailed
from mlscale.schema import ColumnSpec

SPLIT_COLUMN = "split"
SPLIT_ROW_COLUMNS = (SPLIT_COLUMN, RULES_COLUMN, REASON_COLUMN)  # what a row read back from a split carries beside
# the declared columns (its hive partition, the quarantine bookkeeping)
PARTITIONS = ("train", "val", "test", "quarantine", "unused")
REPORT_FILE = "_validation_report.json"
TRAIN_SUMMARY_FILE = "_train_summary.json"
VERSION_FOLDER = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{8}$")  # <prepare key>-<random>: one preparation


@dataclass
class PreparedData:
    """Where the prepared splits are (a path or s3:// URI), how many rows each holds, and what was read."""

    path: str
    rows_read: int
    counts: dict[str, int]
    data_fingerprint: str
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    cache_key: str = ""
    cached: bool = False
    schema: list[dict[str, Any]] = field(default_factory=list)  # the columns validated (empty: older manifests)
    object_store: dict[str, Any] = field(default_factory=dict)  # how to reach an s3:// path (env names, no keys)

    def summary(self) -> dict[str, Any]:
        """What `mlscale prepare` and the prepare job print: counts per split, where, and why rows were kept out."""
        return {"cached": self.cached, "rows_read": self.rows_read,
                **{f"{name}_rows": count for name, count in self.counts.items()}, "prepared_path": self.path,
                "quarantine_reasons": self.quarantine_reasons, "validation_report": str(self.report_path)}

    def column_specs(self) -> list[ColumnSpec]:
        """The schema the data was validated against: what requests to a model trained on it must satisfy."""
        return [ColumnSpec(**spec) for spec in self.schema]

    @property
    def pipeline(self) -> str:
        """The pipeline this preparation belongs to: the folder holding its version folders."""
        *_, parent, last = ["", *self.path.rstrip("/").split("/")]
        return parent if VERSION_FOLDER.match(last) else last

    def split_path(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{SPLIT_COLUMN}={name}"

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """(filesystem, path inside it) for a location in this output, with the object-store settings it was
        written with (credentials come from the environment of whichever process reads)."""
        return resolve(uri, ObjectStoreConfig(**self.object_store))

    def read(self, name: str) -> ray.data.Dataset:
        filesystem, path = self.resolve(self.split_path(name))
        return read_parquet(path, filesystem=filesystem)

    @property
    def valid_rows(self) -> int:
        return sum(self.counts[name] for name in PARTITIONS if name != "quarantine")

    @property
    def report_path(self) -> str:
        return f"{self.path.rstrip('/')}/{REPORT_FILE}"

    def has_report(self) -> bool:
        return exists(*self.resolve(self.report_path))

    def report(self) -> ValidationReport:
        return ValidationReport.from_dict(json.loads(read_text(*self.resolve(self.report_path))))

    def train_summary(self, key: str) -> dict[str, Any] | None:
        """What the prepare pass gathered over the train rows under `key` (a TrainSummary's), or None: not asked
        for, or asked for under another key (e.g. statistics of features configured differently since)."""
        filesystem, path = self.resolve(f"{self.path.rstrip('/')}/{TRAIN_SUMMARY_FILE}")
        if not exists(filesystem, path):
            return None
        saved = json.loads(read_text(filesystem, path))
        return saved["summary"] if saved.get("key") == key else None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "cached"}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> PreparedData:
        return cls(**json.loads(text))


def schema_for(config: PipelineConfig) -> list[ColumnSpec]:
    """The declared schema; without one, the flights schema for the built-in sources, else the files' own."""
    if config.data.schema_:
        return config.data.schema_
    if config.data.source in ("flights", "synthetic"):
        return FLIGHTS_SCHEMA
    return infer_schema(config.data)


def validate_and_split(batch: pa.Table, specs: list[ColumnSpec], rules: list[Rule], split: SplitConfig,
                       time_column: str) -> pa.Table:
    """map_batches body: the rules each row breaks, and the split it belongs to (quarantine if it broke any)."""
    table = validate_batch(batch, specs, rules)
    assigned = assign_splits(table, split, time_column, [spec.name for spec in specs])
    assigned[table.column(RULES_COLUMN).is_valid().to_numpy(zero_copy_only=False)] = "quarantine"
    return table.append_column(SPLIT_COLUMN, pa.array(assigned, pa.string()))


def require_split_column(config: PipelineConfig, specs: list[ColumnSpec]) -> None:
    """A time split over a column the schema does not declare fails before any data is read, naming both."""
    column = split_column(config.split, config.data.time_column)
    declared = [spec.name for spec in specs]
    if column is not None and column not in declared:
        raise ConfigError(f"split: time column {column!r} is not in the data's schema ({', '.join(declared)}); set "
                          f"split.column (or data.time_column), or split by hash / random")
    for key in config.split.keys or []:
        if config.split.method == "hash" and key not in declared:
            raise ConfigError(f"split.keys: column {key!r} is not in the data's schema ({', '.join(declared)})")


def _keys_batch(batch: pa.Table, specs: list[ColumnSpec], key: list[str]) -> pa.Table:
    require_columns(batch, specs)  # this pass reads first: it reports schema breaks for every column
    table, _ = conform_rows(batch, [spec for spec in specs if spec.name in key])
    keys = key_strings(table, key)
    return pa.table({"key": pc.drop_null(keys)})


def _repeated(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.greater(batch.column("count()"), 1))


def shuffle_partitions() -> int:
    """Partitions for a hash shuffle: one per CPU of the cluster, up to Ray Data's default (200). The default alone
    made a small cluster start and feed 200 aggregations for a few thousand keys: the duplicate-key pass of a 34k-row
    sample took 15 s on 2 CPUs, 7 s with 2 partitions (and 39 s beside a serving app)."""
    default = ray.data.DataContext.get_current().default_hash_shuffle_parallelism
    return max(1, min(default, int(ray.cluster_resources().get("CPU", 1))))


def find_duplicate_keys(dataset: ray.data.Dataset, specs: list[ColumnSpec], key: list[str],
                        limit: int) -> list[str]:
    """Keys held by more than one row: a distributed group-by, bounded by `limit` (+1 to tell it was exceeded)."""
    keys = dataset.map_batches(partial(_keys_batch, specs=specs, key=key), batch_format="pyarrow",
                               batch_size=None)
    repeated = keys.groupby("key", num_partitions=shuffle_partitions()).count().map_batches(
        _repeated, batch_format="pyarrow", batch_size=None)
    return [row["key"] for row in repeated.take(limit + 1)]


LOCAL = pafs.LocalFileSystem()


def count_rows(path: Path | str, filesystem: pafs.FileSystem = LOCAL) -> int:
    return pads.dataset(str(path), format="parquet", filesystem=filesystem).count_rows() \
        if exists(filesystem, str(path)) else 0


def rule_counts(quarantine: Path | str, examples: int, filesystem: pafs.FileSystem = LOCAL) -> list[dict[str, Any]]:
    """Per-rule counts and examples over the quarantined rows, as a streaming Ray Data aggregation."""
    if not exists(filesystem, str(quarantine)):
        return []
    partials = read_parquet(str(quarantine), columns=[RULES_COLUMN, REASON_COLUMN],
                                     filesystem=filesystem).map_batches(
        partial(rule_partials, examples=examples), batch_format="pyarrow", batch_size=None
    )
    return [json.loads(row["partial"]) for row in partials.iter_rows()]


def source_rules(source: Source, specs: list[ColumnSpec], settings: ValidationConfig
                 ) -> tuple[list[str], int, list[Rule]]:
    """The passes over a source before its rows are validated: the duplicated keys (when a key is declared), the
    row count (to reconcile the output against), and the rules with those duplicates in them."""
    duplicates = (find_duplicate_keys(source.dataset, specs, settings.unique, settings.max_duplicate_keys)
                  if settings.unique else [])
    rows_read = source.expected_rows if source.expected_rows is not None else source.dataset.count()
    return duplicates, rows_read, build_rules(specs, settings, duplicates)


def judge_output(folder: Path | str, quarantine: Path | str, rows_read: int, counts: dict[str, int], source: str,
                 rules: list[Rule], settings: ValidationConfig, duplicates: list[str],
                 filesystem: pafs.FileSystem = LOCAL, partials: list[dict[str, Any]] | None = None
                 ) -> ValidationReport:
    """Check a written output before it is committed: its partitions' counts reconcile with the rows read; its
    validation report is saved beside it. The caller commits it only when the report passed. `partials`: the
    per-rule counts the writer already gathered (else the quarantine is read back for them)."""
    if sum(counts.values()) != rows_read:
        raise RuntimeError(f"row counts do not reconcile: read {rows_read}, wrote {counts}")
    report = ValidationReport.build(
        source=source, rows_read=rows_read, rows_quarantined=counts["quarantine"], rules=rules,
        partials=partials if partials is not None else rule_counts(quarantine, settings.examples_per_rule, filesystem),
        config=settings, dataset_checks={"duplicate_keys": len(duplicates)} if settings.unique else {},
    )
    write_text(filesystem, f"{folder}/{REPORT_FILE}", json.dumps(report.to_dict(), indent=2))
    return report


def prepare_key(config: PipelineConfig, source_fingerprint: str) -> str:
    settings = config.model_dump(mode="json", include={"data", "split", "validation"})
    return cache_key(source_fingerprint, settings, code_hash("data", "schema.py", "config"))


def prepared_store(config: PipelineConfig) -> tuple[pafs.FileSystem, str]:
    """(filesystem, folder inside it) holding every pipeline's prepared output and manifest."""
    return resolve(config.storage.prepared_uri or str(config.storage.root_path / "prepared"),
                   config.data.object_store)


def manifest_location(config: PipelineConfig) -> tuple[pafs.FileSystem, str]:
    """The record of the last committed preparation: how later jobs and reruns find it."""
    filesystem, folder = prepared_store(config)
    return filesystem, f"{folder}/{config.name}.json"


def _cached(config: PipelineConfig, key: str) -> PreparedData | None:
    try:
        prepared = load_prepared(config)
    except PreparedDataMissing:
        return None
    if prepared.cache_key != key or not prepared.has_report():
        return None
    prepared.cached = True
    return prepared


def _write_and_judge(validated: ray.data.Dataset, filesystem: pafs.FileSystem, folder: str, rows_read: int,
                     source: Source, rules: list[Rule], settings: ValidationConfig, duplicates: list[str],
                     train_summary: TrainSummary | None) -> tuple[dict[str, int], ValidationReport]:
    """One pass: write the splits, and judge them (and summarize the train rows) from what the writer saw."""
    sink = SummarizingParquetSink(folder, filesystem, SPLIT_COLUMN, settings.examples_per_rule, train_summary)
    validated.write_datasink(sink)
    counts = sink.counts(PARTITIONS)
    report = judge_output(folder, f"{folder}/{SPLIT_COLUMN}=quarantine", rows_read, counts, source.description,
                          rules, settings, duplicates, filesystem, sink.rule_partials())
    if train_summary is not None and (summary := sink.train()) is not None:
        write_text(filesystem, f"{folder}/{TRAIN_SUMMARY_FILE}",
                   json.dumps({"key": train_summary.key, "summary": summary}))
    return counts, report


def prepare(config: PipelineConfig, force: bool = False, train_summary: TrainSummary | None = None) -> PreparedData:
    """Read, validate, split and write the source; returns where everything went and the reconciled counts.

    `train_summary`, when given, is gathered over the train rows in the same pass (see PreparedData.train_summary).
    """
    specs = schema_for(config)
    require_split_column(config, specs)
    build_rules(specs, config.validation, [])  # a bad rule expression fails here, before any data is read
    source = read_source(config.data, specs, config.storage.root_path / "cache")
    key = prepare_key(config, source.fingerprint)
    if not force and (hit := _cached(config, key)) is not None:
        return hit
    settings = config.validation
    filesystem, store = prepared_store(config)
    with source.diagnosed():
        duplicates, rows_read, rules = source_rules(source, specs, settings)
        validated = source.dataset.map_batches(
            partial(validate_and_split, specs=specs, rules=rules, split=config.split,
                    time_column=config.data.time_column),
            batch_format="pyarrow",
            batch_size=None,
        )
        version = f"{key[:12]}-{uuid.uuid4().hex[:8]}"  # every preparation a folder of its own, never replaced
        target = f"{store}/{config.name}/{version}"
        if is_local(filesystem):  # staged beside the pipeline's folder, renamed into it once it passed
            staging = Path(store) / f".{config.name}-{version}.tmp"
            try:
                staging.mkdir(parents=True)
                counts, report = _write_and_judge(validated, filesystem, str(staging), rows_read, source, rules,
                                                  settings, duplicates, train_summary)
                if not report.passed:
                    raise ValidationFailed(report, str(set_aside(staging, Path(store) / config.name) / REPORT_FILE))
                Path(target).parent.mkdir(exist_ok=True)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        else:  # no rename: a fresh folder, committed by the manifest below
            counts, report = _write_and_judge(validated, filesystem, target, rows_read, source, rules, settings,
                                              duplicates, train_summary)
            if not report.passed:
                raise ValidationFailed(report, as_uri(filesystem, f"{target}/{REPORT_FILE}"))
    prepared = PreparedData(
        path=as_uri(filesystem, target),
        rows_read=rows_read,
        counts=counts,
        data_fingerprint=source.fingerprint,
        quarantine_reasons=report.counts_by_rule(),
        cache_key=key,
        schema=[spec.model_dump() for spec in specs],
        object_store=config.data.object_store.model_dump(mode="json"),
    )
    write_text(*manifest_location(config), prepared.to_json())
    prune_versions(filesystem, f"{store}/{config.name}", version, config.storage.prepared_retention_s)
    return prepared


def prune_versions(filesystem: pafs.FileSystem, folder: str, committed: str, retention_s: float) -> list[str]:
    """Delete the pipeline's earlier preparations committed more than retention_s ago (by their report's time),
    never the one just committed; a job reading a version younger than that keeps reading it. Returns what went."""
    try:
        entries = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []
    now, deleted = time.time(), []
    for entry in entries:
        if entry.type != pafs.FileType.Directory or not VERSION_FOLDER.match(entry.base_name) or \
                entry.base_name == committed:
            continue
        report = filesystem.get_file_info(f"{entry.path}/{REPORT_FILE}")
        written = report.mtime.timestamp() if report.mtime is not None else None
        if written is not None and now - written < retention_s:
            continue
        with contextlib.suppress(OSError):
            filesystem.delete_dir(entry.path)
            deleted.append(entry.base_name)
    return deleted


def load_prepared(config: PipelineConfig) -> PreparedData:
    """The last committed preparation of this pipeline (by `config.name`), for stages run as separate jobs.

    Args:
        config: the pipeline config (its name and `storage.prepared_uri` or storage root locate the manifest).

    Returns:
        Where the splits are and their counts.

    Raises:
        PreparedDataMissing: the prepare stage has not run for this name under this storage.
    """
    filesystem, manifest = manifest_location(config)
    if not exists(filesystem, manifest):
        raise PreparedDataMissing(f"no prepared data for pipeline {config.name!r} at {as_uri(filesystem, manifest)}: "
                                  f"run the prepare stage first (mlscale prepare, or jobs/prepare.py)")
    return PreparedData.from_json(read_text(filesystem, manifest))
