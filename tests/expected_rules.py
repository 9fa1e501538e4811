"""An independent re-implementation of the validation rules in pandas, to check the quarantine against."""

from __future__ import annotations

import re

import pandas as pd

from mlscale.config import ValidationConfig
from mlscale.schema import ColumnSpec


def expected_rule_counts(frame: pd.DataFrame, specs: list[ColumnSpec], config: ValidationConfig) -> dict[str, int]:
    """{rule id: rows breaking it}, computed with pandas instead of pyarrow."""
    failing: dict[str, pd.Series] = {}
    for spec in specs:
        column = frame[spec.name]
        present = column.notna()
        if not spec.nullable:
            failing[f"{spec.name}.not_null"] = ~present
        if spec.min is not None:
            failing[f"{spec.name}.min"] = present & (column.astype(float) < spec.min)
        if spec.max is not None:
            failing[f"{spec.name}.max"] = present & (column.astype(float) > spec.max)
        if spec.allowed is not None:
            failing[f"{spec.name}.allowed"] = present & ~column.isin(spec.allowed)
        if spec.text_limit is not None:
            failing[f"{spec.name}.max_length"] = present & (column.astype(str).str.len() > spec.text_limit)
        if spec.pattern is not None:
            failing[f"{spec.name}.pattern"] = present & ~column.astype(str).str.fullmatch(spec.pattern)
    for check in config.checks:
        operands = sorted(set(re.findall(r"[A-Za-z_]\w*", check.expr)) & set(frame.columns))
        applicable = frame[operands].notna().all(axis=1)
        failing[f"check.{check.name}"] = applicable & ~frame.astype({c: float for c in operands}).eval(check.expr)
    if config.unique:
        key = frame[config.unique]
        failing[f"unique({','.join(config.unique)})"] = key.notna().all(axis=1) & key.duplicated(keep=False)
    counts = {rule: int(mask.sum()) for rule, mask in failing.items() if mask.any()}
    counts["_any"] = int(pd.concat(failing.values(), axis=1).any(axis=1).sum())
    return counts
