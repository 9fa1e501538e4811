"""The promotion policy as a pure function: no Ray, no MLflow, every branch with its numbers."""

import pytest

from mlscale.errors import PromotionError
from mlscale.promotion import Measurement, decide, judged_elsewhere

CHALLENGER = Measurement("7", {"test_auc": 0.860, "test_ece": 0.04})
CHAMPION = Measurement("5", {"test_auc": 0.850, "test_ece": 0.02})


def judge(policy="if_better", challenger=CHALLENGER, champion=CHAMPION, min_delta=0.0, behaviour=True,
          metric="test_auc", mode="max"):
    return decide("model", "champion", policy, metric, mode, min_delta, challenger, champion, behaviour,
                  ["invariance(tailnum)"] if not behaviour else [])


def test_if_better_promotes_the_exact_versions_it_measured():
    decision = judge()
    assert decision.promote
    assert (decision.challenger_version, decision.champion_version) == ("7", "5")
    assert decision.delta == pytest.approx(0.010)
    assert "0.86000 vs 0.85000 (v5)" in decision.reason


def test_if_better_refuses_a_worse_challenger():
    decision = judge(challenger=Measurement("8", {"test_auc": 0.840}))
    assert not decision.promote
    assert decision.delta == pytest.approx(-0.010)
    assert "not better" in decision.reason


def test_min_delta_must_be_exceeded():
    assert not judge(min_delta=0.0101).promote  # 0.010 gained
    assert judge(min_delta=0.0099).promote


def test_lower_is_better_metrics():
    assert not judge(metric="test_ece", mode="min").promote  # 0.04 > 0.02: worse
    assert judge(challenger=Measurement("9", {"test_ece": 0.01}), metric="test_ece", mode="min").promote


def test_failed_behaviour_blocks_if_better_and_is_named():
    decision = judge(behaviour=False)
    assert not decision.promote and not decision.behaviour_passed
    assert "invariance(tailnum)" in decision.reason


def test_first_model_is_promoted_when_there_is_no_champion():
    decision = judge(champion=None)
    assert decision.promote and decision.champion_version is None and decision.delta is None


def test_manual_never_promotes_and_always_always_does():
    assert not judge(policy="manual").promote
    forced = judge(policy="always", challenger=Measurement("8", {"test_auc": 0.5}), behaviour=False)
    assert forced.promote and forced.reason.startswith("always")


def test_the_same_version_is_not_promoted_over_itself():
    assert not judge(champion=Measurement("7", CHALLENGER.metrics)).promote


def test_unknown_policy_and_missing_metric_are_errors():
    with pytest.raises(PromotionError, match="'sometimes' is unknown"):
        judge(policy="sometimes")
    with pytest.raises(PromotionError, match="has no test_rmse"):
        judge(metric="test_rmse")


def test_a_decision_judged_elsewhere_is_the_same_record_as_one_decide_makes():
    """A person's promotion and a canary's carry every field `decide` fills, so applying and reading them back is
    one path; they promote the exact versions named and say who judged."""
    judged = judge()
    canary = judged_elsewhere("model", "champion", "7", "5", "canary", "canary: 65 requests within every threshold",
                              metric="live_error_rate", mode="min", challenger_value=0.0, champion_value=0.01)
    manual = judged_elsewhere("model", "champion", "9", None, "manual", "manual: `mlscale registry promote`")
    for decision in (canary, manual):
        assert decision.to_dict().keys() == judged.to_dict().keys()
        assert decision.promote and decision.qualified and decision.delta is None
    assert (canary.challenger_version, canary.champion_version, canary.policy) == ("7", "5", "canary")
    assert (manual.challenger_version, manual.champion_version, manual.metric) == ("9", None, "manual_promotion")
