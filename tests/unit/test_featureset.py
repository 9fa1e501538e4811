import numpy as np
import pyarrow as pa
import pytest

from mlscale.config import FeaturesConfig
from mlscale.features.featureset import FeatureSet, FittedFeatures
from mlscale.features.stats import TableStats

CONFIG = FeaturesConfig(
    numeric=["dep_delay", "temp"], categorical=["carrier", "origin"], min_category_count=2,
    hhmm_columns=["sched_dep_time"], date_columns=("year", "month", "day"),
)


def sample_table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    temp = rng.normal(50, 10, n)
    temp[::7] = np.nan
    return pa.table({
        "dep_delay": rng.normal(10, 30, n),
        "temp": pa.array(temp, from_pandas=True),
        "carrier": rng.choice(["UA", "AA", "DL", "ZZ"], n, p=[0.5, 0.3, 0.195, 0.005]),
        "origin": rng.choice(["EWR", "JFK", "LGA"], n),
        "sched_dep_time": rng.integers(500, 2359, n),
        "year": np.full(n, 2013),
        "month": rng.integers(1, 13, n),
        "day": rng.integers(1, 29, n),
    })


def fitted(table=None):
    table = table or sample_table()
    return FeatureSet(CONFIG).fit_stats(TableStats.of(table, CONFIG.numeric, CONFIG.categorical))


def test_partial_stats_merge_to_the_whole():
    table = sample_table(500)
    whole = TableStats.of(table, CONFIG.numeric, CONFIG.categorical)
    merged = TableStats.of(table.slice(0, 123), CONFIG.numeric, CONFIG.categorical).merge(
        TableStats.of(table.slice(123), CONFIG.numeric, CONFIG.categorical))
    for name in CONFIG.numeric:
        assert merged.numeric[name].mean == pytest.approx(whole.numeric[name].mean)
        assert merged.numeric[name].std == pytest.approx(whole.numeric[name].std)
        assert merged.numeric[name].nulls == whole.numeric[name].nulls
    assert merged.categorical["carrier"].counts == whole.categorical["carrier"].counts


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
    features = fitted()
    restored = FittedFeatures.from_json(features.to_json())
    table = sample_table(50, seed=9)
    for key in ("x_num", "x_cat"):
        np.testing.assert_array_equal(features.transform(table)[key], restored.transform(table)[key])
    assert restored.fingerprint == features.fingerprint
    assert [s["name"] for s in restored.state["categorical"]] == CONFIG.categorical


def test_arrow_batches_and_json_records_give_identical_features():
    features = fitted()
    table = sample_table(64, seed=4)
    records = table.to_pylist()
    as_lists = {name: [r[name] for r in records] for name in table.column_names}
    for key in ("x_num", "x_cat"):
        np.testing.assert_array_equal(features.transform(table)[key], features.transform(as_lists)[key])


def test_unsupported_state_version_is_refused():
    features = fitted()
    with pytest.raises(ValueError, match="version 99"):
        FittedFeatures.from_json(features.to_json().replace('"version": 1', '"version": 99'))
