"""Behavioural tests of a trained bundle (Ribeiro et al., "Beyond Accuracy", 2020), run through Bundle.predict_records.

Aggregate metrics can hide a model that learned something absurd. These checks perturb real held-out records and
hand-written cases and state what must (not) happen:
- invariance: a field that should not matter (the aircraft's tail number) barely moves predictions;
- directional: a field that should push one way (a later departure) moves the average prediction that way;
- minimum functionality: obvious cases (a flight leaving 3 hours late) get the obvious answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlscale.config import BehaviourConfig, DirectionalCheck, InvarianceCheck, MinimumCase
from mlscale.registry.bundle import Bundle

Record = Mapping[str, Any]


@dataclass
class CheckResult:
    kind: str
    name: str
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class BehaviourReport:
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if not result.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [asdict(result) for result in self.results]}

    def render(self) -> str:
        lines = [f"behaviour {'PASSED' if self.passed else 'FAILED'}: "
                 f"{sum(r.passed for r in self.results)}/{len(self.results)} checks"]
        lines += [f"  {'ok  ' if r.passed else 'FAIL'} {r.kind} {r.name}: {r.detail}" for r in self.results]
        return "\n".join(lines)


def invariance(bundle: Bundle, records: Sequence[Record], check: InvarianceCheck) -> CheckResult:
    base = bundle.predict_records(records)
    shifts = []
    for value in check.values:
        changed = bundle.predict_records([{**record, check.column: value} for record in records])
        shifts.append(float(np.mean(np.abs(changed - base))))
    worst = max(shifts)
    return CheckResult("invariance", check.column, worst <= check.max_mean_shift,
                       {"mean_abs_shift_per_value": [round(s, 6) for s in shifts], "limit": check.max_mean_shift})


def directional(bundle: Bundle, records: Sequence[Record], check: DirectionalCheck) -> CheckResult:
    usable = [record for record in records if record.get(check.column) is not None]
    base = bundle.predict_records(usable)
    moved = bundle.predict_records([{**record, check.column: record[check.column] + check.delta} for record in usable])
    sign = 1.0 if check.direction == "up" else -1.0
    mean_shift = float(np.mean(moved - base)) if usable else float("nan")
    against = float(np.mean(sign * (moved - base) < -1e-9)) if usable else float("nan")
    return CheckResult("directional", f"{check.column}{check.delta:+g} -> {check.direction}",
                       bool(usable) and sign * mean_shift > 0,
                       {"rows": len(usable), "mean_shift": round(mean_shift, 6),
                        "share_moving_against": round(against, 4)})


def minimum(bundle: Bundle, case: MinimumCase) -> CheckResult:
    prediction = float(bundle.predict_records([case.record])[0])
    passed = (case.min is None or prediction >= case.min) and (case.max is None or prediction <= case.max)
    return CheckResult("minimum", case.name, passed, {"prediction": round(prediction, 6), "min": case.min,
                                                       "max": case.max})


def run_behaviour(bundle: Bundle, records: Sequence[Record], config: BehaviourConfig) -> BehaviourReport:
    """Every configured check on held-out records (invariance, directional) and hand-written cases (minimum)."""
    results = [invariance(bundle, records, check) for check in config.invariance]
    results += [directional(bundle, records, check) for check in config.directional]
    results += [minimum(bundle, case) for case in config.minimum]
    return BehaviourReport(results)
