"""What a finished sweep says: each trial's outcome and best value, the Pareto front, and best value against budget.

Plain functions over plain records, so the sweep, the benchmark and the tests read results the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlscale.direction import better, signed

OUTCOMES = ("completed", "pruned", "stopped", "failed")


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    outcome: str
    """completed (all epochs, or its own early stopping), pruned (by ASHA), stopped (time budget), failed."""
    epochs: float
    value: float | None
    """The trial's best validation metric."""
    metrics: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    error: str = ""


@dataclass(frozen=True)
class Report:
    """One evaluation a trial reported: when, how far it had trained, and the metric."""

    time: float
    trial_id: str
    epoch: float
    value: float
    step: int = 0


def pareto_front(records: list[TrialRecord], cost: str, mode: str) -> list[TrialRecord]:
    """Trials no other trial beats on both the metric and the cost (lower cost is better), cheapest first."""
    scored = [(r, r.value) for r in records if r.value is not None and cost in r.cost]
    front = []
    for record, value in scored:
        dominated = any(
            other is not record
            and not better(value, other_value, mode) and other.cost[cost] <= record.cost[cost]
            and (better(other_value, value, mode) or other.cost[cost] < record.cost[cost])
            for other, other_value in scored
        )
        if not dominated:
            front.append(record)
    return sorted(front, key=lambda r: r.cost[cost])


def pick_winner(records: list[TrialRecord], mode: str, cost: str | None = None,
                max_cost: float | None = None) -> TrialRecord | None:
    """The trial with the best metric (with a cost ceiling: the best among those under it)."""
    candidates = [(r, r.value) for r in records if r.value is not None and r.outcome != "failed"]
    if cost and max_cost is not None:
        candidates = [(r, v) for r, v in candidates if r.cost.get(cost, float("inf")) <= max_cost]
    if not candidates:
        return None
    return max(candidates, key=lambda pair: signed(pair[1], mode))[0]


def budget_curve(reports: list[Report], mode: str) -> list[tuple[float, float]]:
    """(trial-epochs spent, best metric so far) after every report, in the order they happened."""
    reached: dict[str, float] = {}
    spent, best, curve = 0.0, None, []
    for report in sorted(reports, key=lambda r: r.time):
        spent += max(0.0, report.epoch - reached.get(report.trial_id, 0.0))
        reached[report.trial_id] = max(report.epoch, reached.get(report.trial_id, 0.0))
        best = report.value if best is None or better(report.value, best, mode) else best
        curve.append((spent, best))
    return curve


def budget_to_reach(curve: list[tuple[float, float]], target: float, mode: str) -> float | None:
    """Trial-epochs spent when the best value first matched `target`; None if it never did."""
    for spent, best in curve:
        if best == target or better(best, target, mode):
            return spent
    return None
