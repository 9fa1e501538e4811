import re

import pyarrow as pa
import pytest
from pydantic import ValidationError

from mlscale.config import ValidationConfig
from mlscale.data.expressions import columns_of, evaluate
from mlscale.data.validation import (
    REASON_COLUMN,
    RULES_COLUMN,
    ValidationReport,
    build_rules,
    conform_rows,
    rule_partials,
    validate_batch,
)
from mlscale.errors import ExpressionError, SchemaError
from mlscale.schema import ColumnSpec, request_model

SPECS = [
    ColumnSpec(name="month", dtype="int", nullable=False, min=1, max=12),
    ColumnSpec(name="origin", dtype="str", nullable=False, allowed=["EWR", "JFK"]),
    ColumnSpec(name="dest", dtype="str", nullable=True, pattern="[A-Z]{3}"),
    ColumnSpec(name="delay", dtype="float", min=-60, max=600),
]
CHECKS = ValidationConfig(checks=[{"name": "delay_below_month_cap", "expr": "delay <= month * 100"}])


def table(rows):
    return pa.Table.from_pylist(rows, schema=pa.schema([("month", pa.int64()), ("origin", pa.string()),
                                                         ("dest", pa.string()), ("delay", pa.float64())]))


def test_each_rule_is_reported_with_its_value():
    rows = [
        {"month": 1, "origin": "EWR", "dest": "IAH", "delay": 3.0},     # valid
        {"month": None, "origin": "EWR", "dest": "IAH", "delay": 3.0},  # null
        {"month": 13, "origin": "EWR", "dest": "IAH", "delay": 3.0},    # above max
        {"month": 2, "origin": "BOS", "dest": "IAH", "delay": 3.0},     # not allowed
        {"month": 2, "origin": "JFK", "dest": "iah", "delay": -61.0},   # pattern and below min
        {"month": 2, "origin": "JFK", "dest": None, "delay": None},     # nullable columns may be null
        {"month": 1, "origin": "JFK", "dest": "IAH", "delay": 150.0},   # cross-column check
    ]
    out = validate_batch(table(rows), SPECS, build_rules(SPECS, CHECKS))
    rules, reasons = out.column(RULES_COLUMN).to_pylist(), out.column(REASON_COLUMN).to_pylist()
    assert rules[0] is None and reasons[0] is None and rules[5] is None
    assert rules[1] == ["month.not_null"] and reasons[1] == "month.not_null: month is not null (month=None)"
    assert rules[2] == ["month.max"] and reasons[2] == "month.max: month <= 12 (month=13)"
    assert rules[3] == ["origin.allowed"] and "origin='BOS'" in reasons[3]
    assert rules[4] == ["dest.pattern", "delay.min"] and "delay=-61" in reasons[4]
    assert rules[6] == ["check.delay_below_month_cap"] and "delay=150, month=1" in reasons[6]


def test_wrong_typed_values_are_bad_rows_not_a_crash():
    raw = pa.table({"month": ["1", "x", " 3 ", None], "origin": ["EWR"] * 4, "dest": ["IAH"] * 4,
                    "delay": ["1.5", "2e1", "abc", ""]})
    out = validate_batch(raw, SPECS, build_rules(SPECS, ValidationConfig()))
    assert out.column("month").to_pylist() == [1, None, 3, None]
    assert out.column("delay").to_pylist() == [1.5, 20.0, None, None]
    rules = out.column(RULES_COLUMN).to_pylist()
    assert rules[0] is None
    assert rules[1] == ["month.type", "month.not_null"]
    assert rules[2] == ["delay.type"] and "delay='abc'" in out.column(REASON_COLUMN)[2].as_py()
    assert rules[3] == ["delay.type", "month.not_null"]


def test_missing_column_is_a_schema_break_naming_the_file():
    bad = table([{"month": 1, "origin": "EWR", "dest": "IAH", "delay": 1.0}]).drop_columns(["delay"])
    bad = bad.append_column("path", pa.array(["s3://bucket/flights/part-7.parquet"]))
    with pytest.raises(SchemaError, match=r"part-7.parquet: missing declared column\(s\) \['delay'\]"):
        conform_rows(bad, SPECS)


def test_uncastable_column_names_column_and_type():
    bad = pa.table({"month": [[1]], "origin": ["EWR"], "dest": ["IAH"], "delay": [1.0]})
    with pytest.raises(SchemaError, match="column 'month' has type list<item: int64>"):
        conform_rows(bad, SPECS)


def test_check_on_unknown_column_is_refused():
    with pytest.raises(ExpressionError, match=r"undeclared column\(s\) \['speed'\]"):
        build_rules(SPECS, ValidationConfig(checks=[{"name": "fast", "expr": "speed < 700"}]))


def test_expressions_are_vectorized_null_aware_and_safe():
    data = pa.table({"a": [1, 2, None, 4], "b": [2.0, 2.0, 1.0, None]})
    assert evaluate("a < b", data).to_pylist() == [True, False, None, None]
    assert evaluate("abs(a - b) <= 0 or a > 3", data).to_pylist() == [False, True, None, True]
    assert evaluate("a / 2 == 0.5", data).to_pylist()[0] is True  # no integer division
    assert columns_of("a * 2 < b and not a == b") == ["a", "b"]
    for bad in ("__import__('os').system('true')", "a.real > 1", "[a] == b", "a <"):
        with pytest.raises(ExpressionError):
            evaluate(bad, data)


def test_report_sums_partials_and_applies_threshold():
    rows = [{"month": 13, "origin": "EWR", "dest": "IAH", "delay": 1.0}] * 3 + \
           [{"month": 2, "origin": "EWR", "dest": "IAH", "delay": 1.0}] * 97
    rules = build_rules(SPECS, ValidationConfig())
    out = validate_batch(table(rows), SPECS, rules)
    bad = out.filter(out.column(RULES_COLUMN).is_valid())
    import json
    partials = [json.loads(rule_partials(part, 2)["partial"][0]) for part in (bad.slice(0, 1), bad.slice(1))]
    lenient = ValidationReport.build("t", 100, 3, rules, partials, ValidationConfig(max_quarantine_fraction=0.05), {})
    assert lenient.passed and lenient.counts_by_rule() == {"month.max": 3}
    assert len(lenient.rules[[r.rule for r in lenient.rules].index("month.max")].examples) == 3  # examples_per_rule
    strict = ValidationReport.build("t", 100, 3, rules, partials, ValidationConfig(max_quarantine_fraction=0.01), {})
    assert not strict.passed and "3.00%" in strict.render() and "month.max" in strict.render()
    assert ValidationReport.from_dict(json.loads(json.dumps(strict.to_dict()))).failures == strict.failures
    tiny = ValidationReport.build("t", 100, 0, rules, [], ValidationConfig(min_rows=1000), {})
    assert "below validation.min_rows" in tiny.failures[0]


def test_request_model_accepts_what_validation_accepts():
    record = request_model(SPECS)
    ok = record.model_validate({"month": 3, "origin": "JFK", "dest": "LAX", "delay": 12.5})
    assert ok.month == 3 and ok.delay == 12.5
    assert record.model_validate({"month": 3, "origin": "JFK"}).dest is None


def test_an_unknown_field_is_named_unless_it_is_a_declared_passthrough_or_extras_are_ignored():
    with pytest.raises(ValidationError) as caught:
        request_model(SPECS).model_validate({"month": 3, "origin": "JFK", "delya": 12.5})  # misspelt optional
    assert [(error["loc"], error["type"]) for error in caught.value.errors()] == [(("delya",), "extra_forbidden")]
    passing = request_model(SPECS, passthrough=("arr_delay",))
    assert passing.model_validate({"month": 3, "origin": "JFK", "arr_delay": [1]}).model_dump() == {
        "month": 3, "origin": "JFK", "dest": None, "delay": None}
    assert "arr_delay" not in passing.model_json_schema()["properties"]
    lenient = request_model(SPECS, extra="ignore")
    assert lenient.model_validate({"month": 3, "origin": "JFK", "x": 1}).model_dump()["month"] == 3


def test_a_boolean_is_no_number_and_a_lone_surrogate_is_no_text():
    record = request_model(SPECS)
    for field, value in (("month", True), ("delay", False), ("dest", "\ud800"), ("dest", "AB\udfff")):
        with pytest.raises(ValidationError) as caught:
            record.model_validate({"month": 3, "origin": "JFK", field: value})
        assert caught.value.errors()[0]["loc"] == (field,), (field, value)


def test_text_is_bounded_by_max_length_or_the_default_in_requests_and_in_validation():
    from mlscale.schema import DEFAULT_MAX_TEXT_LENGTH

    specs = [ColumnSpec(name="note", dtype="str"), ColumnSpec(name="code", dtype="str", max_length=4)]
    record = request_model(specs)
    record.model_validate({"note": "x" * DEFAULT_MAX_TEXT_LENGTH, "code": "abcd"})
    for field, value in (("note", "x" * (DEFAULT_MAX_TEXT_LENGTH + 1)), ("code", "abcde")):
        with pytest.raises(ValidationError) as caught:
            record.model_validate({field: value})
        assert caught.value.errors()[0]["type"] == "string_too_long"
    rows = pa.table({"note": ["short", "y" * 1_000_000, None], "code": ["ab", "ab", "abcdef"]})
    out = validate_batch(rows, specs, build_rules(specs, ValidationConfig()))
    rules, reasons = out.column(RULES_COLUMN).to_pylist(), out.column(REASON_COLUMN).to_pylist()
    assert rules == [None, ["note.max_length"], ["code.max_length"]]
    assert "1,000,000 characters" in reasons[1] and len(reasons[1]) < 300  # the reason does not repeat the value
    with pytest.raises(ValidationError, match="max_length applies to str columns"):
        ColumnSpec(name="n", dtype="int", max_length=3)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"month": 13, "origin": "JFK"}, "month"),
        ({"month": "march", "origin": "JFK"}, "month"),
        ({"origin": "JFK"}, "month"),
        ({"month": 3, "origin": "BOS"}, "origin"),
        ({"month": 3, "origin": "JFK", "dest": "lax"}, "dest"),
        ({"month": 3, "origin": "JFK", "delay": float("nan")}, "delay"),
    ],
)
def test_request_model_names_the_bad_field(payload, field):
    with pytest.raises(ValidationError) as error:
        request_model(SPECS).model_validate(payload)
    assert [item["loc"][-1] for item in error.value.errors()] == [field]


def test_a_file_source_without_a_declared_schema_uses_its_own_columns(tmp_path):
    """Nothing falls back to the flights schema: a parquet or CSV source is read as its files declare it."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from mlscale.config import DataConfig
    from mlscale.data.sources import infer_schema

    table = pa.table({"id": pa.array([1, 2], pa.int32()), "price": [1.5, None], "shop": ["a", None],
                      "ok": [True, False], "day": pa.array([0, 1], pa.date32())})
    pq.write_table(table, tmp_path / "part-0.parquet")
    specs = infer_schema(DataConfig(source="parquet", path=str(tmp_path), label="price"))
    assert [(s.name, s.dtype, s.nullable) for s in specs] == [
        ("id", "int", True), ("price", "float", False), ("shop", "str", True), ("ok", "str", True),
        ("day", "str", True)]
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    pacsv.write_csv(table.drop_columns(["day"]), csv_dir / "a.csv")
    specs = infer_schema(DataConfig(source="csv", path=str(csv_dir), label="price"))
    assert [(s.name, s.dtype) for s in specs] == [("id", "int"), ("price", "float"), ("shop", "str"), ("ok", "str")]


@pytest.mark.parametrize(("expr", "message"), [
    ("carrier / distance <= 3", "does not fit the declared types {'carrier': 'str', 'distance': 'float'}"),
    ("distance * 2", "gives double, not true/false"),
])
def test_a_check_that_cannot_run_on_the_declared_types_fails_before_any_data(expr, message):
    specs = [ColumnSpec(name="carrier", dtype="str"), ColumnSpec(name="distance", dtype="float")]
    with pytest.raises(ExpressionError, match=re.escape(message)):
        build_rules(specs, ValidationConfig(checks=[{"name": "bad", "expr": expr}]))
