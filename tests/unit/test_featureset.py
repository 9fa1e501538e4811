import json

import numpy as np
import pyarrow as pa
import pytest

from mlscale.config import FeaturesConfig
from mlscale.features.featureset import FeatureSet, FittedFeatures, batch_stats
from tests.reference_hash import fnv1a_splitmix

CONFIG = FeaturesConfig(
    numeric=["dep_delay", "temp"], categorical=["carrier", "origin"], min_category_count=2,
    hhmm_columns=["sched_dep_time"], date_columns=("year", "month", "day"),
)
RICH = FeaturesConfig(
    numeric=[
        {"column": "dep_delay", "clip": [-60, 300], "log1p": True, "buckets": 8},
        {"column": "temp", "scale": "minmax"},
        {"column": "distance", "scale": "none", "log1p": True},
    ],
    categorical=["carrier", {"column": "tailnum", "hash_buckets": 64}],
    crosses=[{"columns": ["origin", "carrier"], "hash_buckets": 32}],
    min_category_count=2, hhmm_columns=["sched_dep_time"], date_columns=("year", "month", "day"),
)


def sample_table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    temp = rng.normal(50, 10, n)
    temp[::7] = np.nan
    return pa.table({
        "dep_delay": rng.normal(10, 30, n),
        "temp": pa.array(temp, from_pandas=True),
        "distance": rng.uniform(100, 2500, n),
        "carrier": rng.choice(["UA", "AA", "DL", "ZZ"], n, p=[0.5, 0.3, 0.195, 0.005]),
        "tailnum": pa.array([f"N{i % 37:03d}" if i % 11 else None for i in range(n)]),
        "origin": rng.choice(["EWR", "JFK", "LGA"], n),
        "sched_dep_time": rng.integers(500, 2359, n),
        "year": np.full(n, 2013),
        "month": rng.integers(1, 13, n),
        "day": rng.integers(1, 29, n),
    })


def fitted(table=None, config=CONFIG):
    table = table or sample_table()
    return FeatureSet(config).fit_stats(batch_stats(table, config))


def test_partial_stats_merge_to_the_whole():
    table = sample_table(500)
    whole = batch_stats(table, RICH)
    merged = batch_stats(table.slice(0, 123), RICH).merge(batch_stats(table.slice(123), RICH))
    for feature in RICH.numeric:
        name = feature.column
        assert merged.numeric[name].mean == pytest.approx(whole.numeric[name].mean)
        assert merged.numeric[name].std == pytest.approx(whole.numeric[name].std)
        assert merged.numeric[name].nulls == whole.numeric[name].nulls
        assert merged.profile[name].max == whole.profile[name].max
    assert merged.categorical["carrier"].counts == whole.categorical["carrier"].counts
    assert "tailnum" not in merged.categorical  # hashed: nothing to count, memory stays bounded


def test_standardization_imputation_and_indicator():
    features = fitted()
    out = features.transform(sample_table())
    names = features.numeric_names
    assert names[:3] == ["dep_delay", "temp", "temp_missing"]
    x = out["x_num"]
    assert abs(x[:, 0].mean()) < 1e-5 and x[:, 0].std() == pytest.approx(1.0, rel=1e-4)
    missing = x[:, 2] == 1.0
    assert missing.sum() == 29 and np.all(x[missing, 1] == 0.0)
    assert x.dtype == np.float32 and out["x_cat"].dtype == np.int64


def test_clip_log1p_minmax_and_unscaled():
    table = sample_table(300)
    features = fitted(table, RICH)
    x = features.transform(table)["x_num"]
    names = features.numeric_names
    delay = np.clip(table.column("dep_delay").to_numpy(), -60, 300)
    expected = np.sign(delay) * np.log1p(np.abs(delay))
    # the scaling constants computed here with numpy, not read from the fitted state under test
    np.testing.assert_allclose(x[:, 0], (expected - expected.mean()) / expected.std(), rtol=1e-4, atol=1e-5)
    temp = x[:, names.index("temp")]
    present = ~np.isnan(table.column("temp").to_numpy(zero_copy_only=False))
    assert temp[present].min() == pytest.approx(0.0) and temp[present].max() == pytest.approx(1.0)
    np.testing.assert_allclose(x[:, names.index("distance")], np.log1p(table.column("distance").to_numpy()),
                               rtol=1e-6)


def test_quantile_buckets_split_the_data_evenly():
    table = sample_table(4000, seed=3)
    features = fitted(table, RICH)
    cat_names = features.categorical_names
    assert cat_names == ["carrier", "tailnum", "dep_delay_bucket", "origin_x_carrier"]
    buckets = features.transform(table)["x_cat"][:, cat_names.index("dep_delay_bucket")]
    counts = np.bincount(buckets, minlength=10)
    assert counts[0] == 0  # bucket 0 is for missing values only
    assert len(features.state["buckets"][0]["edges"]) == 7
    assert counts[1:9].min() > 4000 / 8 * 0.8 and counts[1:9].max() < 4000 / 8 * 1.2
    assert features.cardinalities[cat_names.index("dep_delay_bucket")] == 9


def test_hashing_and_crosses_are_stable_and_null_aware():
    features = fitted(sample_table(), RICH)
    cat_names = features.categorical_names
    row = {"dep_delay": 1.0, "temp": 50.0, "distance": 500.0, "origin": "EWR", "sched_dep_time": 900,
           "year": 2013, "month": 1, "day": 1}
    columns = {name: [value] * 3 for name, value in row.items()}
    columns["carrier"] = ["UA", "UA", None]
    columns["tailnum"] = ["N123AB", "N123AB", None]
    x_cat = features.transform(columns)["x_cat"]
    tail, cross = x_cat[:, cat_names.index("tailnum")], x_cat[:, cat_names.index("origin_x_carrier")]
    assert tail[0] == tail[1] and 1 <= tail[0] <= 64 and tail[2] == 0
    assert cross[0] == cross[1] and 1 <= cross[0] <= 32 and cross[2] == 0
    from mlscale.hashing import bucket_ids
    assert len(set(bucket_ids([pa.array([f"id{i}" for i in range(5000)])], 64).tolist())) == 64


def test_bucket_ids_are_pinned_to_the_documented_hash():
    """Bucket ids are part of the serving contract: a change of hash would silently re-bucket served traffic. The
    expected ids are written out as literals and also follow from an independent plain-Python hash."""
    from mlscale.hashing import HASH_SCHEME, bucket_ids

    values = ["N123AB", "EWR", "", "é"]
    ids = bucket_ids([pa.array(values)], 1_000_003).tolist()
    assert ids == [1 + fnv1a_splitmix(value) % 1_000_003 for value in values]
    assert ids == [311134, 777138, 274438, 897178]
    assert HASH_SCHEME == "fnv1a64-splitmix64-v1"


def test_a_state_fitted_with_another_hash_is_refused():
    from mlscale.features.featureset import FittedFeatures

    state = json.loads(fitted().to_json())
    assert state["hash_scheme"] == "fnv1a64-splitmix64-v1"
    state["hash_scheme"] = "murmur3"
    with pytest.raises(ValueError, match="other buckets than training"):
        FittedFeatures.from_json(json.dumps(state))


def test_vocabulary_and_out_of_vocabulary_bucket():
    features = fitted()
    carrier = features.state["categorical"][0]
    assert carrier["name"] == "carrier" and carrier["vocab"][0] == "UA"
    columns = {name: [v] * 3 for name, v in
               {"dep_delay": 1.0, "temp": 50.0, "origin": "EWR", "sched_dep_time": 900,
                "year": 2013, "month": 1, "day": 1}.items()}
    columns["carrier"] = ["UA", "QQ", None]
    assert features.transform(columns)["x_cat"][:, 0].tolist() == [1, 0, 0]


def test_calendar_and_clock_features():
    features = fitted()
    columns = {"dep_delay": [0.0, 0.0], "temp": [50.0, 50.0], "carrier": ["UA", "UA"], "origin": ["EWR", "EWR"],
               "sched_dep_time": [0, 1200], "year": [2013, 2013], "month": [1, 1], "day": [7, 1]}
    x = features.transform(columns)["x_num"]
    names = features.numeric_names
    clock = x[:, names.index("sched_dep_time_cos")]
    assert clock.tolist() == pytest.approx([1.0, -1.0], abs=1e-6)
    dow = x[:, names.index("day_of_week_sin")]  # 2013-01-07 is a Monday (0): sin(0) = 0
    assert dow[0] == pytest.approx(0.0, abs=1e-6)
    assert dow[1] == pytest.approx(np.sin(2 * np.pi / 7), abs=1e-6)  # 2013-01-01 is a Tuesday (1)


def test_state_survives_json_and_keeps_column_order():
    features = fitted(config=RICH)
    restored = FittedFeatures.from_json(features.to_json())
    table = sample_table(50, seed=9)
    for key in ("x_num", "x_cat"):
        np.testing.assert_array_equal(features.transform(table)[key], restored.transform(table)[key])
    assert restored.fingerprint == features.fingerprint
    assert [s["name"] for s in restored.state["categorical"]] == ["carrier", "tailnum"]


def test_unsupported_state_version_is_refused():
    features = fitted()
    with pytest.raises(ValueError, match="version 99"):
        FittedFeatures.from_json(features.to_json().replace('"version": 2', '"version": 99'))


def test_label_threshold_is_one_rule_for_training_and_evaluation():
    """data.label_threshold (30 minutes here, not the default 15) makes the same 0/1 label where training
    featurizes a batch and where evaluation reads a scored one."""
    from mlscale.config import load_config
    from mlscale.evaluate import labels_of
    from mlscale.features.cache import label_threshold
    from mlscale.features.featureset import transform_batch
    from mlscale.features.label import label_spec

    config = load_config(None, {"data.label_threshold": 30})
    table = sample_table(300)
    delays = np.random.default_rng(5).normal(20, 40, table.num_rows)
    table = table.append_column("arr_delay", pa.array(delays))
    expected = (delays >= 30).astype(np.float64)
    trained_on = transform_batch(table, fitted(table), config.data.label, label_threshold(config))["label"]
    spec = label_spec(config.data, None)  # classification reads only the config
    assert spec["threshold"] == 30 and spec["meaning"] == "arr_delay >= 30"
    np.testing.assert_array_equal(trained_on, expected)
    np.testing.assert_array_equal(labels_of(table, spec), expected)


def test_the_profile_holds_each_numeric_columns_distribution_from_merged_sketches():
    table = sample_table(4000, seed=3)
    merged = batch_stats(table.slice(0, 1500), RICH).merge(batch_stats(table.slice(1500), RICH))
    merged = type(merged).from_dict(json.loads(json.dumps(merged.to_dict())))  # as the fit's partials travel
    quantiles = FeatureSet(RICH).fit_stats(merged).profile()["numeric"]["temp"]["quantiles"]
    raw = table.column("temp").to_numpy(zero_copy_only=False)
    expected = np.nanquantile(raw, np.linspace(0, 1, 101))
    assert len(quantiles) == 101 and quantiles[0] == pytest.approx(np.nanmin(raw))
    assert quantiles[-1] == pytest.approx(np.nanmax(raw))
    # KLL's rank error at k=200 is ~1.3%: the median within a few hundredths of a standard deviation
    assert quantiles[50] == pytest.approx(expected[50], abs=0.05 * np.nanstd(raw))


def test_featurized_arrays_become_the_block_ray_would_make_and_an_empty_one_keeps_its_tensor_columns():
    from ray.data.block import BlockAccessor

    from mlscale.features.cache import tensor_block

    rng = np.random.default_rng(0)
    arrays = {"x_num": rng.random((300, 5), dtype=np.float32), "x_cat": rng.integers(0, 9, (300, 3)),
              "label": rng.random(300, dtype=np.float32)}
    assert tensor_block(arrays).equals(BlockAccessor.batch_to_block(arrays))
    empty = tensor_block({name: values[:0] for name, values in arrays.items()})
    assert empty.num_rows == 0 and empty.schema == tensor_block(arrays).schema


def test_rows_of_very_different_lengths_hash_as_the_reference():
    """Rows are hashed longest first (each byte position touches only the rows that long): one long value among
    short ones, nulls, empty and multi-byte text, and a sliced array all hash exactly as the plain-Python reference."""
    from mlscale import hashing

    values = ["a", None, "é" * 3, "x" * 5000, "", "N123AB", "ü∂", None, "y" * 17]
    for array in (pa.array(values), pa.array(["pad", *values]).slice(1), pa.chunked_array([values[:4], values[4:]])):
        hashes, nulls = hashing.hash_strings(array)
        present = [index for index, value in enumerate(values) if value is not None]
        assert hashes[present].tolist() == [fnv1a_splitmix(values[index]) for index in present]
        assert nulls.tolist() == [value is None for value in values]
    assert hashing.hash_strings(pa.array([], pa.string()))[0].size == 0
