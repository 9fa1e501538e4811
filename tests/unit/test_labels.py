"""Late labels joined to the prediction log, and the live metrics they give."""

import numpy as np
import pyarrow as pa
import pytest

from mlscale.monitor.labels import join_labels, window_performance


def test_labels_join_by_request_and_position_and_give_the_training_metrics():
    log = pa.table({"request_id": ["a", "a", "b", "c"], "record_index": pa.array([0, 1, 0, 0], pa.int32()),
                    "prediction": [0.9, 0.2, 0.7, 0.1], "distance": [100.0, 200.0, 300.0, 400.0]})
    labels = pa.table({"request_id": ["a", "a", "b", "z"], "record_index": [0, 1, 0, 0],
                       "arr_delay": [30.0, -5.0, 2.0, 50.0]})
    joined = join_labels(log, labels, ["request_id"], "arr_delay").sort_by([("request_id", "ascending"),
                                                                            ("record_index", "ascending")])
    assert joined.column("arr_delay").to_pylist() == [30.0, -5.0, 2.0]  # c has no label yet; z was never logged
    metrics = window_performance(joined, {"task": "classification", "threshold": 15.0}, "arr_delay")
    assert metrics["live_rows"] == 3 and metrics["live_auc"] == pytest.approx(1.0)
    regression = window_performance(joined, {"task": "regression"}, "arr_delay")
    assert regression["live_rmse"] == pytest.approx(np.sqrt(((0.9 - 30) ** 2 + (0.2 + 5) ** 2 + (0.7 - 2) ** 2) / 3))


def test_a_missing_join_or_label_column_is_named():
    log = pa.table({"request_id": ["a"], "prediction": [0.5]})
    with pytest.raises(KeyError, match="'flight' is not in the prediction log"):
        join_labels(log, pa.table({"flight": [1], "y": [1.0]}), ["flight"], "y")
    with pytest.raises(KeyError, match="label column 'y'"):
        join_labels(log, pa.table({"request_id": ["a"]}), ["request_id"], "y")


def test_a_null_key_matches_nothing_and_each_row_gets_its_own_label():
    log = pa.table({"request_id": ["a", "a", "b", None, "c"], "record_index": pa.array([0, 1, 0, 0, 0], pa.int32()),
                    "prediction": [0.1, 0.2, 0.3, 0.4, 0.5]})
    labels = pa.table({"request_id": ["a", "b", "a", "z", None], "record_index": [1, 0, 0, 0, 0],
                       "arr_delay": [10.0, 20.0, 30.0, 40.0, 50.0]})
    joined = join_labels(log, labels, ["request_id"], "arr_delay").to_pydict()
    assert joined == {"request_id": ["a", "a", "b"], "record_index": [0, 1, 0], "prediction": [0.1, 0.2, 0.3],
                      "arr_delay": [30.0, 10.0, 20.0]}
