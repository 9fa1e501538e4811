"""The canary policy as a pure function: live numbers in, promote / roll back / wait out, with reasons."""

import pytest

from mlscale.config import CanaryConfig
from mlscale.serve.live import LiveStats
from mlscale.serve.release import P99_MIN_REQUESTS, decide_release

POLICY = CanaryConfig(min_requests=100, max_error_rate=0.02, max_p99_ratio=1.5, p99_floor_ms=10,
                      max_prediction_shift=0.05, timeout_s=600)


def traffic(requests: int, errors: int = 0, milliseconds: float = 4.0, shift: float = 0.0) -> LiveStats:
    stats = LiveStats()
    for index in range(requests):
        stats.request(milliseconds / 1000, failed=index < errors)
        stats.predicted([0.3 + shift])
        stats.compared([0.3 + shift], [0.3])
    return stats


def decide(champion: LiveStats, challenger: LiveStats, elapsed: float = 30.0, **changes):
    return decide_release(POLICY.model_copy(update=changes), "1", "2", champion, challenger, 1.0, elapsed)


def test_a_healthy_challenger_is_promoted_once_it_has_enough_traffic():
    early = decide(traffic(50), traffic(99))
    assert early.action == "wait" and not early.final and "99 of 100" in early.reasons[0]
    ready = decide(traffic(900), traffic(100, shift=0.01))
    assert ready.action == "promote" and ready.final
    assert ready.challenger["requests"] == 100 and ready.champion_version == "1" and ready.challenger_version == "2"


def test_hold_instead_of_promote_when_auto_promote_is_off():
    assert decide(traffic(900), traffic(100), auto_promote=False).action == "hold"


@pytest.mark.parametrize(("challenger", "reason"), [
    (traffic(100, errors=3), "error rate 0.0300 > 0.02"),
    (traffic(100, milliseconds=45.0), "p99 latency 50 ms > 1.5 x the champion's 5 ms"),
    (traffic(100, shift=0.08), "prediction shift 0.0800 > 0.05"),
])
def test_each_broken_threshold_rolls_back_and_is_named(challenger, reason):
    decision = decide(traffic(900), challenger)
    assert decision.action == "rollback"
    assert any(reason in text for text in decision.reasons), decision.reasons


def test_a_small_absolute_latency_excess_is_noise_not_a_rollback():
    # 7.5 ms vs 3 ms is 2.5x, but only 4.5 ms above: under the 10 ms floor
    assert decide(traffic(900, milliseconds=2.5), traffic(100, milliseconds=7.0)).action == "promote"


def test_all_broken_thresholds_are_reported_together():
    decision = decide(traffic(900), traffic(100, errors=10, milliseconds=400, shift=0.5))
    assert decision.action == "rollback" and len(decision.reasons) == 3


def test_shift_is_measured_in_units_of_the_label_scale():
    champion, challenger = traffic(900), traffic(100, shift=8.0)  # regression: 8 minutes off
    assert decide_release(POLICY, "1", "2", champion, challenger, label_scale=40.0).action == "rollback"
    assert decide_release(POLICY, "1", "2", champion, challenger, label_scale=400.0).action == "promote"


def test_a_canary_without_enough_traffic_by_the_timeout_is_rolled_back():
    decision = decide(traffic(10), traffic(5), elapsed=601)
    assert decision.action == "rollback" and "timeout" in decision.reasons[0]


def test_live_stats_merge_by_addition_and_round_trip_as_json():
    first, second = traffic(10, errors=1, milliseconds=3), traffic(30, milliseconds=40, shift=0.1)
    merged = first.merge(second)
    assert merged.requests == 40 and merged.errors == 1 and merged.paired == 40
    assert merged.latency_quantile_ms(0.2) == 3 and merged.latency_quantile_ms(0.99) == 50
    assert merged.mean_abs_shift == pytest.approx(0.075)
    assert type(merged).from_dict(merged.to_dict()) == merged


def test_no_promotion_without_a_measured_shift_on_enough_paired_records():
    """min_requests answered, but the champion's shadow answer was measured on too few records: the shift is
    unknown, so the canary waits, and past the timeout it is rolled back rather than promoted unjudged."""
    unpaired = LiveStats()
    for _ in range(200):
        unpaired.request(0.004, failed=False)
        unpaired.predicted([0.3])
    unpaired.compared([0.9] * 20, [0.3] * 20)  # a large shift, but on 20 records only: not yet evidence
    waiting = decide(traffic(900), unpaired, min_paired_records=50)
    assert waiting.action == "wait" and "20 of the 50 paired records" in waiting.reasons[0]
    late = decide(traffic(900), unpaired, elapsed=601, min_paired_records=50)
    assert late.action == "rollback" and "timeout" in late.reasons[0]
    unpaired.compared([0.9] * 30, [0.3] * 30)
    assert decide(traffic(900), unpaired, min_paired_records=50).action == "rollback"  # now measured: 0.6 > 0.05


def test_latency_is_judged_on_enough_requests_and_a_promotion_waits_for_it():
    """60 requests' p99 is their slowest one: a single slow first call must not roll a healthy canary back (seen:
    one 75 ms request among 63), and nothing is promoted before latency is compared; at 100 each it counts."""
    one_slow = traffic(59)
    one_slow.request(0.075, failed=False)
    waiting = decide(traffic(900), one_slow, min_requests=60, min_paired_records=50)
    assert waiting.action == "wait" and "60 of the 100 requests per version" in waiting.reasons[0]
    assert decide(traffic(900), one_slow, elapsed=601, min_requests=60, min_paired_records=50).action == "rollback"
    slow = traffic(P99_MIN_REQUESTS, milliseconds=75.0)
    assert decide(traffic(900), slow, min_requests=60, min_paired_records=50).action == "rollback"
    assert decide(traffic(900), traffic(P99_MIN_REQUESTS), min_requests=60, min_paired_records=50).action == "promote"
