"""The prepare stage on real data: every row lands in exactly one place, bad rows with their reasons."""

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pytest

from mlscale.data.flights import NULL_VALUES, package_data_dir, sample_mask
from mlscale.data.prepare import PARTITIONS, count_rows, load_prepared, prepare
from mlscale.data.validation import REASON_COLUMN, RULES_COLUMN
from mlscale.features.cache import FeatureCache
from mlscale.features.featureset import FeatureSet, FitStatistics
from mlscale.features.stats import TableStats

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


def test_the_counts_the_writer_reported_are_the_rows_in_its_files(full):
    _, prepared = full
    for name in PARTITIONS:
        written = count_rows(prepared.split_path(name)) if name in prepared.counts else 0
        assert written == prepared.counts[name], name


@pytest.fixture(scope="module")
def summarized(pipeline_result):
    """The session pipeline's own prepare pass, on fresh storage: prepare_stage gathers the train split's fit
    statistics as it writes (a forced prepare of the same sample here cost 3.6-16.5 s for nothing more)."""
    config, result = pipeline_result
    assert not result.prepared.cached
    return config, result.prepared


def test_fit_statistics_gathered_while_writing_are_those_of_a_pass_over_the_train_split(summarized, monkeypatch,
                                                                                     tmp_path):
    """The prepare pass summarizes the train rows as it writes them; features fitted from that summary are the
    ones a separate streaming fit over the written train split learns (and the cache uses it: no second pass)."""
    config, prepared = summarized
    gathered = prepared.train_summary(FitStatistics(config.features).key)
    assert gathered is not None and gathered["rows"] == prepared.counts["train"] > 0
    from_summary = FeatureSet(config.features).fit_stats(TableStats.from_dict(gathered)).state
    from_pass = FeatureSet(config.features).fit(prepared.read("train")).state
    assert _differences(from_summary, from_pass) == []

    other = config.features.model_copy(update={"min_category_count": config.features.min_category_count + 1})
    assert prepared.train_summary(FitStatistics(other).key) is None  # statistics of other features: not used

    def no_second_pass(self, dataset):
        raise AssertionError("fitted by a pass over the data although the prepare pass gathered the statistics")

    monkeypatch.setattr(FeatureSet, "fit", no_second_pass)
    cache = FeatureCache(tmp_path / "features", "fresh")  # not the session's cache, which another test may have filled
    fitted, cached = cache.fitted(config, prepared)
    assert not cached and _differences(fitted.state, from_pass) == []


SKETCHED = ("edges", "quantiles", "mass")


def _differences(a, b, path="state", rel=1e-9) -> list[str]:
    """Where two fitted states differ: structure, strings and numbers must be equal to rounding. What comes from
    mergeable quantile sketches (bucket edges, the monitoring profile's quantiles and bin masses) depends on how the
    rows were grouped into blocks, as for any two streaming fits, so only its shape is compared here; the sketches'
    accuracy has its own tests (tests/unit/test_sketch.py: rank error under 1% after merging)."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b) if isinstance(b, dict) else b!r}"]
        return [d for k in a for d in (
            ([] if len(a[k]) == len(b[k]) else [f"{path}.{k}: length"]) if k in SKETCHED
            else _differences(a[k], b[k], f"{path}.{k}", rel))]
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{path}: {a!r} != {b!r}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{path}[{i}]", rel)]
    if isinstance(a, float) or isinstance(b, float):
        return [] if a == pytest.approx(b, rel=rel, abs=1e-12) else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_a_new_preparation_commits_beside_the_one_jobs_are_reading(ray_session, small_config_factory):
    """A retrain's prepare (the same name, another split) commits a version of its own: a job that read the
    manifest before keeps reading the version it was given; versions past storage.prepared_retention_s go at the
    next commit, never the committed one."""
    from pathlib import Path

    config = small_config_factory("versions", **{"data.source": "synthetic", "data.synthetic.rows": 3_000,
                                                 "data.synthetic.bad_fraction": 0.0})
    first = prepare(config)
    retrain = config.model_copy(update={"split": config.split.model_copy(update={"test": [12], "val": [11]})})
    second = prepare(retrain)
    assert second.path != first.path and load_prepared(config) == second
    assert first.read("val").count() == first.counts["val"]  # still there, whole
    assert Path(second.path).parent == Path(first.path).parent
    expired = retrain.model_copy(update={"storage": retrain.storage.model_copy(update={"prepared_retention_s": 0})})
    third = prepare(expired, force=True)
    versions = sorted(path.name for path in Path(third.path).parent.iterdir())
    assert versions == [Path(third.path).name]
