"""Row-level expectations, evaluated vectorized per batch, and the ValidationReport that sums them up.

The rules come from two places: the schema (type, not-null, range, allowed set, regex per column) and the
validation config (cross-column checks, key uniqueness). Each rule has a stable id (`dep_delay.max`,
`check.plausible_speed`, `unique(year,month,...)`) that is written next to every quarantined row, so the
report, the quarantine table and the metrics in MLflow all speak of the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlscale.config import ValidationConfig
from mlscale.data.expressions import columns_of, evaluate
from mlscale.errors import ExpressionError, SchemaError
from mlscale.schema import ColumnSpec, arrow_schema

REASON_COLUMN = "quarantine_reason"
RULES_COLUMN = "quarantine_rules"
PATH_COLUMN = "path"  # added by Ray Data's include_paths
KEY_SEPARATOR = "\x1f"
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_INTEGER = r"^\s*[-+]?\d+(\.0*)?\s*$"


@dataclass(frozen=True)
class Rule:
    """One expectation: which rows break it, and what a person reads about it."""

    id: str
    description: str
    columns: tuple[str, ...]
    failing: Callable[[pa.Table], np.ndarray]


def _mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _column_rules(spec: ColumnSpec) -> list[Rule]:
    name, found = spec.name, []
    if not spec.nullable:
        found.append(Rule(f"{name}.not_null", f"{name} is not null", (name,),
                          lambda t: t.column(name).is_null().to_numpy(zero_copy_only=False)))
    if spec.min is not None:
        low = spec.min
        found.append(Rule(f"{name}.min", f"{name} >= {low:g}", (name,), lambda t: _mask(pc.less(t.column(name), low))))
    if spec.max is not None:
        high = spec.max
        found.append(Rule(f"{name}.max", f"{name} <= {high:g}", (name,),
                          lambda t: _mask(pc.greater(t.column(name), high))))
    if spec.allowed is not None:
        allowed = pa.array(spec.allowed, type=spec.arrow_type)
        found.append(Rule(f"{name}.allowed", f"{name} in {spec.allowed}", (name,),
                          lambda t: _mask(pc.invert(pc.is_in(t.column(name), value_set=allowed)))))
    if spec.text_limit is not None:
        longest = spec.text_limit
        found.append(Rule(f"{name}.max_length", f"{name} has at most {longest:,} characters", (name,),
                          lambda t: _mask(pc.greater(pc.utf8_length(t.column(name)), longest))))
    if spec.pattern is not None:
        regex = f"^(?:{spec.pattern})$"
        found.append(Rule(f"{name}.pattern", f"{name} matches /{spec.pattern}/", (name,),
                          lambda t: _mask(pc.invert(pc.match_substring_regex(t.column(name), regex)))))
    return found


def _check_rule(name: str, expr: str) -> Rule:
    """A cross-column rule; rows where an operand is null are not applicable and pass."""
    return Rule(f"check.{name}", expr, tuple(columns_of(expr)), lambda t: _mask(pc.invert(evaluate(expr, t))))


def key_strings(table: pa.Table, key: list[str]) -> pa.Array | pa.ChunkedArray:
    """One string per row identifying its key (null when any key column is null)."""
    parts = [pc.cast(table.column(name), pa.string()) for name in key]
    return pc.binary_join_element_wise(*parts, KEY_SEPARATOR)


def unique_rule_id(key: list[str]) -> str:
    return f"unique({','.join(key)})"


def _unique_rule(key: list[str], duplicates: list[str]) -> Rule:
    value_set = pa.array(duplicates, type=pa.string())
    return Rule(unique_rule_id(key), f"no two rows share ({', '.join(key)})", tuple(key),
                lambda t: _mask(pc.is_in(key_strings(t, key), value_set=value_set)))


def _dry_run(name: str, expr: str, specs: list[ColumnSpec]) -> None:
    """Evaluate a check on no rows of the declared types: arithmetic on a text column, or a check that is not a
    yes/no question, fails here with the rule named, not later inside a Ray task on the first batch."""
    try:
        result = evaluate(expr, arrow_schema(specs).empty_table())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as error:
        types = {spec.name: spec.dtype for spec in specs if spec.name in columns_of(expr)}
        raise ExpressionError(f"validation.checks.{name}: {expr!r} does not fit the declared types {types}: "
                              f"{str(error).splitlines()[0]}") from None
    if not pa.types.is_boolean(result.type):
        raise ExpressionError(f"validation.checks.{name}: {expr!r} gives {result.type}, not true/false: "
                              f"compare it with something (e.g. `... <= 750`)")


def build_rules(specs: list[ColumnSpec], config: ValidationConfig,
                duplicate_keys: list[str] | None = None) -> list[Rule]:
    """Every row-level rule, in a stable order: type, column rules, cross-column checks, key uniqueness."""
    rules = [Rule(f"{spec.name}.type", f"{spec.name} is {spec.dtype}", (spec.name,), lambda t: np.zeros(0, bool))
             for spec in specs]
    for spec in specs:
        rules += _column_rules(spec)
    known = {spec.name for spec in specs}
    for check in config.checks:
        unknown = [name for name in columns_of(check.expr) if name not in known]
        if unknown:
            raise ExpressionError(f"validation.checks.{check.name}: {check.expr!r} names undeclared column(s) "
                                  f"{unknown}")
        _dry_run(check.name, check.expr, specs)
        rules.append(_check_rule(check.name, check.expr))
    if config.unique:
        rules.append(_unique_rule(config.unique, duplicate_keys or []))
    return rules


def _lenient_cast(column: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Cast a column; values that cannot be cast become null and are flagged, instead of failing the whole batch."""
    try:
        return column.cast(target), np.zeros(len(column), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            raise
    pattern = _INTEGER if pa.types.is_integer(target) else _NUMBER
    good = pc.match_substring_regex(column, pattern)
    bad = _mask(pc.and_(pc.invert(good), pc.is_valid(column)))
    cleaned = pc.if_else(good, pc.utf8_trim_whitespace(column), pa.scalar(None, pa.string()))
    as_float = cleaned.cast(pa.float64())
    return (as_float.cast(target, safe=False) if pa.types.is_integer(target) else as_float), bad


def require_columns(table: pa.Table, specs: list[ColumnSpec]) -> str:
    """Raise a schema break naming the file(s) when a declared column is missing; returns where the batch is from."""
    origin = "batch"
    if PATH_COLUMN in table.column_names:
        origin = ", ".join(pc.unique(table.column(PATH_COLUMN)).to_pylist()[:3])
    missing = [spec.name for spec in specs if spec.name not in table.column_names]
    if missing:
        found = [name for name in table.column_names if name != PATH_COLUMN]
        raise SchemaError(f"{origin}: missing declared column(s) {missing}; the file has {found}")
    return origin


def conform_rows(table: pa.Table, specs: list[ColumnSpec]) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Select and cast the declared columns. A missing column is a schema break naming the file; a value of the
    wrong type is a bad row (its cell becomes null and the row is flagged under `<column>.type`)."""
    origin = require_columns(table, specs)
    columns, type_failures = [], {}
    for spec in specs:
        try:
            column, bad = _lenient_cast(table.column(spec.name), spec.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise SchemaError(f"{origin}: column {spec.name!r} has type {table.column(spec.name).type}, "
                              f"which cannot become {spec.dtype}: {error}") from None
        columns.append(column)
        if bad.any():
            type_failures[f"{spec.name}.type"] = bad
    return pa.Table.from_arrays(columns, schema=arrow_schema(specs)), type_failures


SHOWN_CHARS = 80  # how much of an offending value a quarantine reason repeats


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(value) if isinstance(value, str) else len(text):,} characters)"


def quarantine_columns(original: pa.Table, table: pa.Table, rules: list[Rule],
                       type_failures: dict[str, np.ndarray]) -> tuple[pa.Array, pa.Array]:
    """Per row: the ids of the rules it breaks (a list) and a readable reason with the offending values."""
    rule_ids: dict[int, list[str]] = {}
    reasons: dict[int, list[str]] = {}
    for rule in rules:
        source = original if rule.id in type_failures else table
        mask = type_failures.get(rule.id) if rule.id.endswith(".type") else rule.failing(table)
        if mask is None or not mask.any():
            continue
        rows = np.flatnonzero(mask)
        values = {name: source.column(name).take(pa.array(rows)).to_pylist() for name in rule.columns}
        for position, row in enumerate(rows.tolist()):
            shown = ", ".join(f"{name}={_shown(values[name][position])}" for name in rule.columns)
            rule_ids.setdefault(row, []).append(rule.id)
            reasons.setdefault(row, []).append(f"{rule.id}: {rule.description} ({shown})")
    # Python work only for the bad rows; the valid majority stays null without a per-row loop.
    ids_column = np.full(table.num_rows, None, dtype=object)
    reason_column = np.full(table.num_rows, None, dtype=object)
    for row, ids in rule_ids.items():
        ids_column[row] = ids
        reason_column[row] = "; ".join(reasons[row])
    return pa.array(ids_column, type=pa.list_(pa.string())), pa.array(reason_column, type=pa.string())


def validate_batch(batch: pa.Table, specs: list[ColumnSpec], rules: list[Rule]) -> pa.Table:
    """The declared columns plus the rules each row breaks and why (both null for a valid row)."""
    table, type_failures = conform_rows(batch, specs)
    rule_ids, reasons = quarantine_columns(batch, table, rules, type_failures)
    return table.append_column(RULES_COLUMN, rule_ids).append_column(REASON_COLUMN, reasons)


@dataclass
class RuleResult:
    rule: str
    description: str
    rows_checked: int
    rows_failed: int
    examples: list[str] = field(default_factory=list)

    @property
    def failed_fraction(self) -> float:
        return self.rows_failed / self.rows_checked if self.rows_checked else 0.0


def rule_partials(batch: pa.Table, examples: int) -> dict[str, list[str]]:
    """map_batches body over quarantined rows: per rule, how many rows broke it and the first few reasons."""
    counts: dict[str, int] = {}
    shown: dict[str, list[str]] = {}
    for ids, reason in zip(batch.column(RULES_COLUMN).to_pylist(), batch.column(REASON_COLUMN).to_pylist(),
                           strict=True):
        for rule_id, part in zip(ids, reason.split("; "), strict=False):
            counts[rule_id] = counts.get(rule_id, 0) + 1
            if len(shown.setdefault(rule_id, [])) < examples:
                shown[rule_id].append(part)
    return {"partial": [json.dumps({"counts": counts, "examples": shown})]}


@dataclass
class ValidationReport:
    """What validation found: per rule rows checked/failed with examples, dataset checks, and the verdict."""

    source: str
    rows_read: int
    rows_quarantined: int
    max_quarantine_fraction: float
    rules: list[RuleResult]
    dataset_checks: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def quarantine_fraction(self) -> float:
        return self.rows_quarantined / self.rows_read if self.rows_read else 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    @classmethod
    def build(cls, source: str, rows_read: int, rows_quarantined: int, rules: list[Rule],
              partials: list[dict[str, Any]], config: ValidationConfig,
              dataset_checks: dict[str, Any]) -> ValidationReport:
        counts: dict[str, int] = {}
        examples: dict[str, list[str]] = {}
        for partial in partials:
            for rule_id, count in partial["counts"].items():
                counts[rule_id] = counts.get(rule_id, 0) + count
            for rule_id, shown in partial["examples"].items():
                examples[rule_id] = (examples.get(rule_id, []) + shown)[: config.examples_per_rule]
        results = [RuleResult(rule.id, rule.description, rows_read, counts.get(rule.id, 0), examples.get(rule.id, []))
                   for rule in rules]
        report = cls(source=source, rows_read=rows_read, rows_quarantined=rows_quarantined,
                     max_quarantine_fraction=config.max_quarantine_fraction, rules=results,
                     dataset_checks=dataset_checks)
        report.failures = report._verdict(config)
        return report

    def _verdict(self, config: ValidationConfig) -> list[str]:
        failures = []
        if self.rows_read < config.min_rows:
            failures.append(f"row count {self.rows_read:,} is below validation.min_rows {config.min_rows:,}")
        if config.max_rows is not None and self.rows_read > config.max_rows:
            failures.append(f"row count {self.rows_read:,} is above validation.max_rows {config.max_rows:,}")
        if self.quarantine_fraction > config.max_quarantine_fraction:
            failures.append(f"{self.rows_quarantined:,} of {self.rows_read:,} rows quarantined "
                            f"({self.quarantine_fraction:.2%}) > validation.max_quarantine_fraction "
                            f"({config.max_quarantine_fraction:.2%})")
        duplicates = self.dataset_checks.get("duplicate_keys", 0)
        if duplicates > config.max_duplicate_keys:
            failures.append(f"{duplicates:,} duplicate keys > validation.max_duplicate_keys "
                            f"({config.max_duplicate_keys:,})")
        return failures

    def counts_by_rule(self) -> dict[str, int]:
        return {result.rule: result.rows_failed for result in self.rules if result.rows_failed}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "quarantine_fraction": self.quarantine_fraction}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        data = {k: v for k, v in data.items() if k not in ("passed", "quarantine_fraction")}
        data["rules"] = [RuleResult(**rule) for rule in data["rules"]]
        return cls(**data)

    def render(self) -> str:
        """A plain-text table a person reads in a job log."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"validation {verdict}: {self.source}: {self.rows_read:,} rows read, "
                 f"{self.rows_quarantined:,} quarantined ({self.quarantine_fraction:.2%})"]
        lines += [f"  ! {failure}" for failure in self.failures]
        broken = [result for result in self.rules if result.rows_failed]
        if broken:
            lines.append(f"  {'rule':<44} {'failed':>10} {'checked':>12}  example")
            for result in sorted(broken, key=lambda r: -r.rows_failed):
                example = result.examples[0] if result.examples else ""
                lines.append(f"  {result.rule:<44} {result.rows_failed:>10,} {result.rows_checked:>12,}  "
                             f"{example[:100]}")
        for name, value in self.dataset_checks.items():
            lines.append(f"  dataset check {name}: {value}")
        return "\n".join(lines)

