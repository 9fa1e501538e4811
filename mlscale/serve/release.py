"""The canary policy as a pure function: live numbers of the champion and the challenger in, a decision out
(promote, roll back, or wait), with its reasons and numbers. Applied separately (mlscale.stages.release), tested
without Ray or HTTP."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from mlscale.config import CanaryConfig
from mlscale.serve.live import LiveStats

Action = Literal["promote", "rollback", "wait", "hold", "abort"]  # abort: the canary did not reach an end
# A p99 of fewer answered requests is the slowest single request (one GC pause, one cold first call): latency is
# compared only once both versions have this many, and a promotion waits for it.
P99_MIN_REQUESTS = 100


@dataclass(frozen=True)
class ReleaseDecision:
    action: Action
    champion_version: str
    challenger_version: str
    reasons: list[str]
    champion: dict = field(default_factory=dict)
    challenger: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def final(self) -> bool:
        return self.action != "wait"

    def to_dict(self) -> dict:
        return asdict(self)


def decide_release(policy: CanaryConfig, champion_version: str, challenger_version: str, champion: LiveStats,
                   challenger: LiveStats, label_scale: float = 1.0, elapsed_s: float = 0.0) -> ReleaseDecision:
    """Judge a canary on live traffic.

    Args:
        policy: the thresholds (serve.canary).
        champion_version, challenger_version: the two versions being served.
        champion, challenger: their live numbers since the canary began (summed over replicas).
        label_scale: what a prediction shift is measured in (1 for probabilities, the label's std for regression).
        elapsed_s: how long the canary has run (past policy.timeout_s without a verdict it is rolled back).

    Returns:
        rollback when a threshold is broken (each broken one is a reason), promote when the challenger has answered
        min_requests requests, its prediction shift was measured on min_paired_records records and both versions'
        p99 on P99_MIN_REQUESTS requests each, all within every threshold (hold instead when auto_promote is off),
        else wait; past timeout_s without that evidence, rollback. Only requests a version answered count
        (the replica leaves out what the caller got wrong).
    """
    def verdict(action: Action, reasons: list[str]) -> ReleaseDecision:
        return ReleaseDecision(action, champion_version, challenger_version, reasons, champion.summary(),
                               challenger.summary(), round(elapsed_s, 3))

    if challenger.requests < policy.min_requests:
        if elapsed_s >= policy.timeout_s:
            return verdict("rollback", [f"timeout: {challenger.requests} challenger requests in {elapsed_s:.0f} s, "
                                        f"fewer than the {policy.min_requests} needed to judge it"])
        return verdict("wait", [f"{challenger.requests} of {policy.min_requests} challenger requests"])
    broken = []
    if challenger.error_rate > policy.max_error_rate:
        broken.append(f"error rate {challenger.error_rate:.4f} > {policy.max_error_rate:g} "
                      f"({challenger.errors} of {challenger.requests}; champion {champion.error_rate:.4f})")
    mine, theirs = challenger.latency_quantile_ms(0.99), champion.latency_quantile_ms(0.99)
    latency_known = min(challenger.requests, champion.requests) >= P99_MIN_REQUESTS
    if latency_known and mine > theirs * policy.max_p99_ratio and mine - theirs > policy.p99_floor_ms:
        broken.append(f"p99 latency {mine:g} ms > {policy.max_p99_ratio:g} x the champion's {theirs:g} ms")
    shift = challenger.mean_abs_shift if challenger.paired >= policy.min_paired_records else None
    if shift is not None and shift / label_scale > policy.max_prediction_shift:
        broken.append(f"prediction shift {shift / label_scale:.4f} > {policy.max_prediction_shift:g} (mean "
                      f"|challenger - champion| on {challenger.paired} records, in units of {label_scale:g})")
    if broken:
        return verdict("rollback", broken)
    if shift is None:  # too few paired records: nothing is known yet of how far its answers are from the champion's
        unmeasured = (f"prediction shift measured on {challenger.paired} of the {policy.min_paired_records} paired "
                      "records needed")
    elif not latency_known:
        unmeasured = (f"p99 latency compared on {min(challenger.requests, champion.requests)} of the "
                      f"{P99_MIN_REQUESTS} requests per version needed")
    else:
        within = (f"{challenger.requests} requests within every threshold (error rate {challenger.error_rate:.4f}, "
                  f"p99 {mine:g} ms vs {theirs:g} ms, shift {shift / label_scale:.4f} on {challenger.paired} records)")
        return verdict("promote" if policy.auto_promote else "hold", [within])
    if elapsed_s >= policy.timeout_s:
        return verdict("rollback", [f"timeout: {unmeasured} in {elapsed_s:.0f} s"])
    return verdict("wait", [unmeasured])
