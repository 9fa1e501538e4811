"""The int8 gate as a pure decision (measured, recorded and served for real in test_release.py): the drop is in
the metric's own direction, and the record tagged on the version says what was measured and allowed."""

import pytest

from mlscale.registry.store import set_version_tag
from mlscale.stages.deploy import judge_variant


def test_the_drop_follows_the_metric_direction_and_the_tolerance_is_inclusive():
    auc = judge_variant("int8", "test_auc", fp32=0.90, value=0.88, mode="max", tolerance=0.02)
    assert auc.drop == pytest.approx(0.02) and auc.accepted is (auc.drop <= 0.02)
    assert not judge_variant("int8", "test_auc", 0.90, 0.85, "max", 0.02).accepted
    rmse = judge_variant("int8", "test_rmse", fp32=500.0, value=530.0, mode="min", tolerance=20.0)
    assert rmse.drop == 30.0 and not rmse.accepted  # a larger error is a loss
    assert judge_variant("int8", "test_rmse", 500.0, 490.0, "min", 0.0).accepted  # better than fp32: a gain
    assert rmse.record() == {"variant": "int8", "metric": "test_rmse", "fp32": 500.0, "int8": 530.0, "drop": 30.0,
                             "tolerance": 20.0, "accepted": False}


@pytest.mark.parametrize("uri", ["models:/m@champion", "runs:/abc/model", "/tmp/bundle"])
def test_a_variant_is_recorded_only_on_a_pinned_version(uri):
    with pytest.raises(ValueError, match="not a pinned registry version"):
        set_version_tag(uri, "mlscale.variant.int8", "{}", "sqlite:///:memory:")
