"""Drift statistics against a training profile: no drift on the same distribution, clear drift on a shifted one."""

import numpy as np
import pyarrow as pa
import pytest

from mlscale.monitor.drift import categorical_drift, has_moved, numeric_drift, overall_drift, profile_drift, psi

TRAINING = np.random.default_rng(0).normal(10.0, 2.0, 200_000)
QUANTILES = np.quantile(TRAINING, np.linspace(0, 1, 101)).tolist()


@pytest.fixture
def rng() -> np.random.Generator:
    """Each test its own generator: what one draws never depends on which tests ran before it."""
    return np.random.default_rng(12)


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_difference():
    same = np.full(10, 0.1)
    assert psi(same, same) == pytest.approx(0.0)
    assert 0 < psi(same, np.r_[np.full(5, 0.12), np.full(5, 0.08)]) < psi(same, np.r_[np.full(5, 0.18),
                                                                                            np.full(5, 0.02)])


def test_a_sample_of_the_training_distribution_does_not_drift(rng):
    drift = numeric_drift("x", {"quantiles": QUANTILES}, rng.normal(10.0, 2.0, 5_000))
    assert drift.psi < 0.02 and drift.p_value > 0.01 and drift.test == "kstest"


def test_a_shifted_distribution_drifts_by_psi_and_by_the_ks_test(rng):
    drift = numeric_drift("x", {"quantiles": QUANTILES}, rng.normal(11.0, 2.0, 5_000))  # half a standard deviation
    assert drift.psi > 0.2 and drift.p_value < 1e-6


def test_missing_values_are_counted_apart_and_ties_merge_their_bins(rng):
    mostly_zero = np.quantile(np.r_[np.zeros(900), rng.exponential(1.0, 100)], np.linspace(0, 1, 11),
                              method="inverted_cdf").tolist()  # stored values, as the KLL sketch returns
    live = np.r_[np.zeros(90), rng.exponential(1.0, 10), np.full(25, np.nan)]
    drift = numeric_drift("precip", {"quantiles": mostly_zero}, live)
    assert drift.live_null_fraction == pytest.approx(0.2) and drift.psi < 0.1


def test_a_column_of_repeated_values_does_not_drift_against_itself(rng):
    """Wind speed is reported in whole knots: ~20 distinct values, each held by many rows. Bins read from the
    sketch's CDF give each value its whole training mass (the ranks alone gave a value spanning 0.25-0.42 only up to
    0.4 and pushed the rest into the next bin: PSI 0.3 on a sample of the training data itself); KS, which assumes no
    ties, gives way to the chi-square test over the same bins."""
    from mlscale.features.stats import Distribution

    knots = np.arange(20) * 1.15078
    weights = np.exp(-((np.arange(20) - 6) ** 2) / 18.0)
    weights /= weights.sum()
    training = Distribution.of(rng.choice(knots, 300_000, p=weights))
    profile = {"quantiles": training.quantiles(), "bins": training.bins()}
    assert sum(profile["bins"]["mass"]) == pytest.approx(1.0)
    calm = numeric_drift("wind_speed", profile, rng.choice(knots, 400, p=weights))
    assert calm.psi < 0.1 and calm.test == "chisquare" and calm.p_value > 1e-3
    windier = numeric_drift("wind_speed", profile, rng.choice(knots, 400, p=np.roll(weights, 3)))
    assert windier.psi > 0.25 and windier.p_value < 1e-6


def test_categorical_drift_by_frequencies_with_unseen_values_as_other():
    frequencies = {"UA": 0.5, "B6": 0.3, "EV": 0.2}
    same = ["UA"] * 500 + ["B6"] * 300 + ["EV"] * 200
    moved = ["UA"] * 200 + ["B6"] * 300 + ["EV"] * 200 + ["NEW"] * 300 + [None] * 100
    calm, shifted = categorical_drift("carrier", frequencies, same), categorical_drift("carrier", frequencies, moved)
    assert calm.psi == pytest.approx(0.0, abs=1e-3) and calm.js_distance == pytest.approx(0.0, abs=1e-3)
    assert shifted.psi > 0.5 and shifted.js_distance > 0.3 and shifted.p_value < 1e-6
    assert shifted.live_null_fraction == pytest.approx(100 / 1100)
    assert overall_drift([calm, shifted]) == pytest.approx((calm.psi + shifted.psi) / 2)


def test_a_small_window_of_a_many_valued_column_moves_only_past_sampling_noise():
    """400 rows of a column with 105 values (the flights' destinations), the profile holding the top 60: a random
    sample of the training distribution itself passes the PSI threshold one time in five, so PSI alone would call
    it drift; with the chi-square test at 0.01 it is called about as often as the level says, and a real shift
    (the ten commonest values at a third of their share) is still called every time."""
    rng = np.random.default_rng(1)
    names = [f"D{i:03d}" for i in range(105)]
    weights = 1.0 / np.arange(1, 106) ** 0.9
    weights /= weights.sum()
    frequencies = dict(zip(names[:60], weights[:60].tolist(), strict=True))
    calm = [categorical_drift("dest", frequencies, list(rng.choice(names, 400, p=weights))) for _ in range(300)]
    assert sum(drift.psi > 0.25 for drift in calm) >= 30
    assert sum(has_moved(drift, 0.25, 0.01) for drift in calm) <= 9
    shifted_weights = weights * np.r_[np.full(10, 0.3), np.ones(95)]
    shifted_weights /= shifted_weights.sum()
    shifted = [categorical_drift("dest", frequencies, list(rng.choice(names, 400, p=shifted_weights)))
               for _ in range(50)]
    assert all(has_moved(drift, 0.25, 0.01) for drift in shifted)


def test_drift_of_live_columns_against_a_fitted_bundle_profile():
    from mlscale.features.featureset import FeatureSet, batch_stats
    from tests.unit.test_featureset import RICH, sample_table

    training = sample_table(4000, seed=1)
    profile = FeatureSet(RICH).fit_stats(batch_stats(training, RICH)).profile()
    calm = sample_table(2000, seed=2)
    warm = calm.set_column(calm.schema.get_field_index("temp"), "temp",
                           pa.array(calm.column("temp").to_numpy(zero_copy_only=False) + 8.0))  # warmer season
    steady = {d.column: d for d in profile_drift(profile, calm.to_pydict())}
    drifted = {d.column: d for d in profile_drift(profile, warm.to_pydict())}
    assert set(steady) == {"dep_delay", "temp", "distance", "carrier"}
    assert max(d.psi for d in steady.values()) < 0.05
    assert drifted["temp"].psi > 0.25 and drifted["temp"].p_value < 1e-6
    assert drifted["dep_delay"].psi < 0.05  # only what moved drifts


def test_windows_of_the_prediction_log_drift_only_where_the_traffic_moved(tmp_path):
    """Two days of logged traffic written by the service's own log writer: the second day is warmer."""
    import asyncio
    from datetime import UTC, datetime
    from unittest import mock

    from mlscale.config import MonitorConfig
    from mlscale.features.featureset import FeatureSet, batch_stats
    from mlscale.monitor.windows import judge_windows, read_log
    from mlscale.schema import ColumnSpec
    from mlscale.serve.predlog import LogSettings, PredictionLog
    from tests.unit.test_featureset import RICH, sample_table

    profile = FeatureSet(RICH).fit_stats(batch_stats(sample_table(4000, seed=1), RICH)).profile()
    schema = [ColumnSpec(name="temp", dtype="float"), ColumnSpec(name="carrier", dtype="str")]
    writer = PredictionLog(LogSettings(str(tmp_path / "log")), schema)
    for day, shift, seed in ((1, 0.0, 5), (2, 15.0, 6)):
        table = sample_table(600, seed=seed)
        temps = table.column("temp").to_pylist()
        records = [{"temp": None if t is None else t + shift, "carrier": c}
                   for t, c in zip(temps, table.column("carrier").to_pylist(), strict=True)]
        with mock.patch("mlscale.serve.predlog.datetime") as clock:
            clock.now.return_value = datetime(2013, 6, day, 12, tzinfo=UTC)
            writer.offer(f"day-{day}", "7", records, [0.5] * len(records))
        asyncio.run(writer.flush())
    windows = judge_windows(read_log(str(tmp_path / "log")), profile, MonitorConfig())
    assert [w.start[:10] for w in windows] == ["2013-06-01", "2013-06-02"]
    assert [w.rows for w in windows] == [600, 600] and windows[0].versions == {"7": 600}
    assert not windows[0].drifted and windows[1].drifted_features == ["temp"]
    assert windows[1].overall > windows[0].overall
    too_small = judge_windows(read_log(str(tmp_path / "log")), profile, MonitorConfig(min_window_rows=1000))
    assert all(w.overall is None and not w.drifted for w in too_small)
