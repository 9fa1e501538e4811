"""Sources and validation for real: S3 through a moto server on loopback, local CSV/parquet with every kind of bad
row, broken files, the failure threshold, and caching of prepared data and features."""

from __future__ import annotations

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from mlscale.config import ObjectStoreConfig
from mlscale.data.flights import FLIGHTS_SCHEMA
from mlscale.data.prepare import PARTITIONS, prepare
from mlscale.data.sources import object_store
from mlscale.data.synthetic import DEFECTS, generate_table
from mlscale.data.validation import REASON_COLUMN, RULES_COLUMN
from mlscale.errors import SchemaError, SourceError, ValidationFailed
from mlscale.features.cache import FeatureCache
from tests.expected_rules import expected_rule_counts

pytestmark = pytest.mark.integration

KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
CHECKS = [{"name": "plausible_speed", "expr": "distance / air_time * 60 <= 750"},
          {"name": "time_parts", "expr": "hour * 100 + minute == sched_dep_time"}]
ROWS = 20_000
DECLARED = {"data.schema": [spec.model_dump() for spec in FLIGHTS_SCHEMA]}  # files carry no rules: declare them
DEFECT_RULES = {"null_carrier": "carrier.not_null", "dep_delay_range": "dep_delay.max",
                "origin_not_allowed": "origin.allowed", "carrier_pattern": "carrier.pattern",
                "implausible_speed": "check.plausible_speed", "duplicate_key": f"unique({','.join(KEY)})",
                "time_parts": "check.time_parts"}


def synthetic_rows(n=ROWS, bad_fraction=0.02):
    return generate_table(np.arange(n), seed=7, bad_fraction=bad_fraction)


def validation(**overrides):
    return {"validation.unique": KEY, "validation.checks": CHECKS, **overrides}


def assert_reconciles(prepared, table, config):
    """Every row in exactly one partition; per-rule counts equal an independent pandas computation."""
    assert prepared.rows_read == table.num_rows
    assert sum(prepared.counts.values()) == table.num_rows
    expected = expected_rule_counts(table.to_pandas(), FLIGHTS_SCHEMA, config.validation)
    assert prepared.counts["quarantine"] == expected.pop("_any")
    assert prepared.quarantine_reasons == expected
    quarantine = pads.dataset(prepared.split_path("quarantine"), format="parquet").to_table()
    assert quarantine.column(RULES_COLUMN).null_count == 0 and quarantine.column(REASON_COLUMN).null_count == 0


def test_s3_parquet_with_hive_partitions_and_every_kind_of_bad_row(ray_session, small_config_factory, s3_endpoint):
    table = synthetic_rows()
    filesystem = object_store(ObjectStoreConfig(endpoint_url=s3_endpoint))  # credentials from the env
    pq.write_to_dataset(table, "lake/flights", partition_cols=["month"], filesystem=filesystem)
    config = small_config_factory("s3-source", **{
        "data.source": "parquet", "data.path": "s3://lake/flights", **DECLARED,
        "data.object_store.endpoint_url": s3_endpoint, **validation()})
    prepared = prepare(config)
    assert_reconciles(prepared, table, config)
    seen = set(prepared.quarantine_reasons)
    assert {DEFECT_RULES[kind] for kind in DEFECTS} <= seen  # one rule per injected kind, all caught
    report = prepared.report()
    assert report.passed and report.dataset_checks["duplicate_keys"] > 0
    assert prepared.data_fingerprint.startswith("parquet-")
    assert set(pads.dataset(prepared.split_path("train"), format="parquet", partitioning="hive")
               .to_table().column("month").unique().to_pylist()) == set(config.split.train)


def test_s3_csv_reads_through_the_same_filesystem(ray_session, small_config_factory, s3_endpoint):
    table = synthetic_rows(3_000, bad_fraction=0.0)
    filesystem = object_store(ObjectStoreConfig(endpoint_url=s3_endpoint))  # credentials from the env
    for index, start in enumerate((0, 1_500)):
        with filesystem.open_output_stream(f"lake/csv/part-{index}.csv") as stream:
            pacsv.write_csv(table.slice(start, 1_500), stream)
    config = small_config_factory("s3-csv", **{
        "data.source": "csv", "data.path": "s3://lake/csv", "data.object_store.endpoint_url": s3_endpoint,
        **DECLARED})
    prepared = prepare(config)
    assert prepared.rows_read == 3_000 and sum(prepared.counts.values()) == 3_000
    assert prepared.data_fingerprint.startswith("csv-")


def test_prepared_data_on_object_storage_is_committed_by_its_manifest(ray_session, small_config_factory,
                                                                     s3_endpoint):
    """storage.prepared_uri on S3 (what a cluster's nodes share): the splits and the manifest go there, not under
    storage.root; stages read them back through the manifest; a rerun with a new config replaces the output and
    removes the old one; a failed validation leaves the committed output and manifest as they were."""
    from mlscale.data.prepare import load_prepared

    store = object_store(ObjectStoreConfig(endpoint_url=s3_endpoint))
    config = small_config_factory("s3-prepared", **{
        "data.source": "synthetic", "data.synthetic.rows": 6_000, "data.synthetic.bad_fraction": 0.01,
        "storage.prepared_uri": "s3://lake/prepared", "data.object_store.endpoint_url": s3_endpoint})
    config = config.model_copy(update={"name": "s3-prepared"})
    first = prepare(config)
    assert first.path.startswith("s3://lake/prepared/s3-prepared/") and sum(first.counts.values()) == 6_000
    assert not (config.storage.root_path / "prepared").exists()
    assert load_prepared(config) == first and prepare(config).cached
    assert first.read("train").count() == first.counts["train"] > 0
    assert first.report().rows_quarantined == first.counts["quarantine"] > 0

    changed = config.model_copy(update={"split": config.split.model_copy(update={"test": [12], "val": [10]})})
    second = prepare(changed)
    assert second.path != first.path and load_prepared(changed) == second
    old = first.path.removeprefix("s3://")
    assert first.read("val").count() == first.counts["val"]  # a job reading the replaced version keeps reading it
    from mlscale.data.prepare import prune_versions

    folder, committed = second.path.removeprefix("s3://").rsplit("/", 1)
    assert prune_versions(store, folder, committed, retention_s=0) == [old.rsplit("/", 1)[1]]  # past retention
    assert store.get_file_info(old).type == pafs.FileType.NotFound

    strict = changed.model_copy(update={"validation": changed.validation.model_copy(
        update={"max_quarantine_fraction": 0.001})})
    with pytest.raises(ValidationFailed) as failure:
        prepare(strict, force=True)
    kept = failure.value.report_path
    assert kept.startswith("s3://lake/prepared/s3-prepared/") and str(failure.value).endswith(kept.rsplit("/", 1)[0])
    assert store.get_file_info(kept.removeprefix("s3://")).type == pafs.FileType.File
    assert load_prepared(strict) == second and second.read("val").count() == second.counts["val"]


def test_a_wrong_key_is_refused_by_the_store(ray_session, small_config_factory, s3_endpoint, monkeypatch):
    """Credentials come from the environment only; the store checks them, so a wrong secret fails, naming the path."""
    table = synthetic_rows(500, bad_fraction=0.0)
    pq.write_table(table, "lake/keyed/part-0.parquet", filesystem=object_store(ObjectStoreConfig(
        endpoint_url=s3_endpoint)))
    config = small_config_factory("s3-wrong-key", **{
        "data.source": "parquet", "data.path": "s3://lake/keyed", "data.object_store.endpoint_url": s3_endpoint,
        **DECLARED})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SourceError, match=r"cannot access lake/keyed: .*ACCESS_DENIED"):
        prepare(config)


def test_csv_with_wrong_typed_values_quarantines_them(ray_session, small_config_factory, tmp_path):
    table = synthetic_rows(5_000)
    pacsv.write_csv(table.slice(0, 2_500), tmp_path / "a.csv")
    text = (tmp_path / "a.csv").read_text().splitlines()
    header = text[0].split(",")
    bad_line = text[1].split(",")
    bad_line[header.index('"dep_delay"')] = '"soon"'
    bad_line[header.index('"distance"')] = '"far"'
    (tmp_path / "a.csv").write_text("\n".join([text[0], ",".join(bad_line), *text[2:]]) + "\n")
    pacsv.write_csv(table.slice(2_500), tmp_path / "b.csv")
    config = small_config_factory("csv-source", **{"data.source": "csv", "data.path": str(tmp_path), **DECLARED})
    prepared = prepare(config)
    assert prepared.rows_read == 5_000 and sum(prepared.counts.values()) == 5_000
    assert prepared.quarantine_reasons["dep_delay.type"] == 1 and prepared.quarantine_reasons["distance.type"] == 1
    example = next(r for r in prepared.report().rules if r.rule == "dep_delay.type").examples[0]
    assert "dep_delay='soon'" in example


def test_broken_inputs_fail_with_the_file_named(ray_session, small_config_factory, tmp_path):
    missing = small_config_factory("missing", **{"data.source": "parquet", "data.path": str(tmp_path / "nope"),
                                                 **DECLARED})
    with pytest.raises(SourceError, match="source path not found: .*nope"):
        prepare(missing)
    folder = tmp_path / "corrupt"
    folder.mkdir()
    pq.write_table(synthetic_rows(1_000), folder / "good.parquet")
    (folder / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    corrupt = small_config_factory("corrupt", **{"data.source": "parquet", "data.path": str(folder), **DECLARED})
    with pytest.raises(SourceError, match=r"broken\.parquet: .*(magic|footer|Parquet)"):
        prepare(corrupt)
    assert not (corrupt.storage.root_path / "prepared" / "corrupt").exists()  # nothing half-written
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    pq.write_table(synthetic_rows(1_000).drop_columns(["dep_delay", "carrier"]), wrong / "old-export.parquet")
    columns = small_config_factory("wrong-columns", **{"data.source": "parquet", "data.path": str(wrong),
                                                       **DECLARED})
    missing = r"old-export\.parquet: missing declared column\(s\) \['dep_delay', 'carrier'\]"
    with pytest.raises(SchemaError, match=missing):
        prepare(columns)
    assert not (columns.storage.root_path / "prepared" / "wrong-columns").exists()


def test_too_many_bad_rows_fail_with_the_report_and_keep_nothing_committed(ray_session, small_config_factory):
    config = small_config_factory("threshold", **{
        "data.source": "synthetic", "data.synthetic.rows": 10_000, "data.synthetic.bad_fraction": 0.05,
        "validation.max_quarantine_fraction": 0.01})
    with pytest.raises(ValidationFailed) as failure:
        prepare(config)
    message = str(failure.value)
    assert "validation FAILED" in message and "> validation.max_quarantine_fraction (1.00%)" in message
    assert "dep_delay.max" in message and "rejected" in message
    target = config.storage.root_path / "prepared" / config.name
    assert not target.exists() and not (target.parent / f"{config.name}.json").exists()
    rejected = target.with_name(f"{config.name}.rejected")
    assert (rejected / "_validation_report.json").exists() and (rejected / "split=quarantine").exists()


def test_prepared_data_and_features_are_cached_by_fingerprint(ray_session, small_config_factory):
    config = small_config_factory("cache", **{"data.source": "synthetic", "data.synthetic.rows": 8_000,
                                             "data.synthetic.bad_fraction": 0.0})
    first = prepare(config)
    again = prepare(config)
    assert not first.cached and again.cached and again.cache_key == first.cache_key
    assert set(first.counts) == set(PARTITIONS)
    changed = config.model_copy(update={"split": config.split.model_copy(update={"test": [12], "val": [10]})})
    assert not prepare(changed).cached  # another config: recomputed, and the manifest moves with it
    assert not prepare(config).cached
    cache = FeatureCache.for_run(config, prepare(config))
    features, hit = cache.fitted(config, prepare(config))
    train, train_hit = cache.transformed(config, prepare(config), features, "train")
    assert not hit and not train_hit and train.count() == prepare(config).counts["train"]
    again_features, hit = cache.fitted(config, prepare(config))
    _, train_hit = cache.transformed(config, prepare(config), features, "train")
    assert hit and train_hit and again_features.fingerprint == features.fingerprint
    wider = config.model_copy(update={"features": config.features.model_copy(update={"max_categories": 5})})
    assert FeatureCache.for_run(wider, prepare(config)).key != cache.key
