"""The behavioural checks judge a model by what it does to perturbed and hand-written records."""

import numpy as np

from mlscale.behaviour import run_behaviour
from mlscale.config import BehaviourConfig


class DelayModel:
    """Stands in for a bundle: late probability rises with departure delay and ignores the aircraft."""

    def predict_records(self, records):
        return np.array([1 / (1 + np.exp(-((r.get("dep_delay") or 0) - 15) / 10)) for r in records])


RECORDS = [{"dep_delay": d, "tailnum": "N1"} for d in (-10, 0, 5, 20, 40, None)]


def test_a_sensible_model_passes():
    config = BehaviourConfig.model_validate({
        "invariance": [{"column": "tailnum", "values": ["N2", None], "max_mean_shift": 0.001}],
        "directional": [{"column": "dep_delay", "delta": 30, "direction": "up"}],
        "minimum": [{"name": "very late", "record": {"dep_delay": 180}, "min": 0.9},
                    {"name": "early", "record": {"dep_delay": -10}, "max": 0.2}],
    })
    report = run_behaviour(DelayModel(), RECORDS, config)
    assert report.passed, report.render()
    directional = report.results[1]
    assert directional.detail["rows"] == 5  # the record without a delay cannot be moved
    assert directional.detail["share_moving_against"] == 0


def test_each_kind_of_check_catches_a_violation():
    config = BehaviourConfig.model_validate({
        "invariance": [{"column": "dep_delay", "values": [120], "max_mean_shift": 0.05}],
        "directional": [{"column": "dep_delay", "delta": 30, "direction": "down"}],
        "minimum": [{"name": "on time", "record": {"dep_delay": 0}, "min": 0.5}],
    })
    report = run_behaviour(DelayModel(), RECORDS, config)
    assert [r.passed for r in report.results] == [False, False, False]
    assert "FAIL invariance dep_delay" in report.render()
    assert report.to_dict()["passed"] is False
