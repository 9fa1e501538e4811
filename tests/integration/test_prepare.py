"""The prepare stage on real data: every row lands in exactly one place, bad rows with their reasons."""

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pytest

from mlscale.data.flights import NULL_VALUES, package_data_dir, sample_mask
from mlscale.data.prepare import PARTITIONS, load_prepared, prepare
from mlscale.data.validation import REASON_COLUMN, RULES_COLUMN

pytestmark = pytest.mark.integration


def read_partition(prepared, name):
    return pads.dataset(prepared.split_path(name), format="parquet").to_table()


@pytest.fixture(scope="module")
def full(ray_session, small_config_factory):
    config = small_config_factory("prepare-full", **{"data.sample_fraction": 1.0})
    return config, prepare(config)


def test_all_real_rows_reconcile(full):
    _, prepared = full
    assert prepared.rows_read == 336_776
    assert sum(prepared.counts.values()) == prepared.rows_read
    assert prepared.valid_rows + prepared.counts["quarantine"] == 336_776
    assert prepared.counts["unused"] == 0  # the default splits cover all twelve months


def test_quarantine_holds_exactly_the_rows_without_a_label(full):
    _, prepared = full
    quarantine = read_partition(prepared, "quarantine")
    assert quarantine.num_rows == prepared.counts["quarantine"] > 0
    assert quarantine.column(REASON_COLUMN).null_count == 0 and quarantine.column(RULES_COLUMN).null_count == 0
    assert prepared.quarantine_reasons["arr_delay.not_null"] == quarantine.column("arr_delay").null_count
    raw = pacsv.read_csv(pa.BufferReader(_flights_csv()), convert_options=pacsv.ConvertOptions(null_values=NULL_VALUES))
    assert quarantine.num_rows == raw.column("arr_delay").null_count  # cancelled or diverted: no label, nothing else


def _flights_csv() -> bytes:
    import zipfile

    with zipfile.ZipFile(package_data_dir() / "flights.csv.zip") as archive:
        return archive.read(archive.namelist()[0])


def test_valid_partitions_are_clean_and_split_by_month(full):
    config, prepared = full
    for name in ("train", "val", "test"):
        table = read_partition(prepared, name)
        assert table.column(REASON_COLUMN).null_count == table.num_rows
        assert set(table.column("month").unique().to_pylist()) == set(getattr(config.split, name))


def test_manifest_lets_later_jobs_find_the_data(full):
    config, prepared = full
    assert load_prepared(config) == prepared


def test_the_real_data_passes_every_declared_rule_but_the_label(full):
    """The flights config's key uniqueness and cross-column checks hold on all 336,776 real rows."""
    config, prepared = full
    report = prepared.report()
    assert report.passed and report.dataset_checks == {"duplicate_keys": 0}
    assert set(prepared.quarantine_reasons) == {"arr_delay.not_null", "dep_delay.not_null"}
    checked = {result.rule for result in report.rules}
    assert {"check.plausible_speed", "check.time_parts", f"unique({','.join(config.validation.unique)})"} <= checked
    assert prepare(config).cached  # same source, config and code: the committed output is reused


def test_sample_is_the_same_hash_sample(ray_session, small_config_factory):
    config = small_config_factory("prepare-sample", **{"data.sample_fraction": 0.05})
    prepared = prepare(config)
    raw = pacsv.read_csv(pa.BufferReader(_flights_csv()), convert_options=pacsv.ConvertOptions(null_values=NULL_VALUES))
    assert prepared.rows_read == int(sample_mask(raw, 0.05).sum())
    assert sum(prepared.counts.values()) == prepared.rows_read
    assert set(prepared.counts) == set(PARTITIONS)
