import numpy as np
import pytest

from mlscale.features.sketch import QuantileSketch

QS = np.linspace(0.01, 0.99, 99)


def rank_error(sketch, data):
    estimates = sketch.quantiles(QS)
    ordered = np.sort(data)
    below = np.searchsorted(ordered, estimates, side="left") / data.size  # a tied value spans [below, upto]
    upto = np.searchsorted(ordered, estimates, side="right") / data.size
    return np.max(np.maximum(0.0, np.maximum(below - QS, QS - upto)))


@pytest.mark.parametrize("distribution", ["normal", "lognormal", "discrete"])
def test_merged_sketch_is_accurate_with_bounded_memory(distribution):
    rng = np.random.default_rng(1)
    data = {"normal": rng.normal(0, 1, 400_000), "lognormal": rng.lognormal(0, 2, 400_000),
            "discrete": rng.integers(0, 50, 400_000).astype(float)}[distribution]
    partials = [QuantileSketch(k=512).update(chunk) for chunk in np.array_split(data, 97)]
    merged = partials[0]
    for partial in partials[1:]:
        merged = merged.merge(partial)
    assert merged.count == data.size
    assert merged.size < 512 * 12  # O(k log(n/k)), not O(n)
    assert rank_error(merged, data) < 0.01


def test_nan_is_ignored_and_round_trip_is_exact():
    sketch = QuantileSketch(k=64).update(np.array([np.nan, 1.0, 2.0, 3.0, np.nan]))
    assert sketch.count == 3
    again = QuantileSketch.from_dict(sketch.to_dict())
    np.testing.assert_array_equal(again.quantiles([0.0, 0.5, 1.0]), sketch.quantiles([0.0, 0.5, 1.0]))
    assert np.isnan(QuantileSketch().quantiles([0.5])[0])
