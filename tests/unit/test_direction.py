"""Which way is better, named once: each comparison of one metric's values goes through mlscale.direction."""

import pytest

from mlscale.direction import better, gain, mode_of, signed


@pytest.mark.parametrize(("metric", "mode"), [("val_auc", "max"), ("test_r2", "max"), ("val_rmse", "min"),
                                              ("test_log_loss", "min"), ("live_mae", "min"), ("test_ece", "min")])
def test_the_name_says_which_way_is_better(metric, mode):
    assert mode_of(metric) == mode


def test_gain_is_positive_when_better_whichever_way_the_metric_goes():
    assert gain(0.9, 0.8, "max") == pytest.approx(0.1) and gain(0.8, 0.9, "max") == pytest.approx(-0.1)
    assert gain(3.0, 5.0, "min") == 2.0 and better(3.0, 5.0, "min") and not better(5.0, 5.0, "min")
    assert max([3.0, 1.0, 2.0], key=lambda v: signed(v, "min")) == 1.0
    with pytest.raises(ValueError, match="max or min"):
        gain(1.0, 2.0, "up")
