import pyarrow as pa
import pytest
from pydantic import ValidationError

from mlscale.data.schema import ColumnSpec, SchemaError, conform, quarantine_reasons, request_model

SPECS = [
    ColumnSpec(name="month", dtype="int", nullable=False, min=1, max=12),
    ColumnSpec(name="origin", dtype="str", nullable=False, allowed=["EWR", "JFK"]),
    ColumnSpec(name="dest", dtype="str", nullable=True, pattern="[A-Z]{3}"),
    ColumnSpec(name="delay", dtype="float", min=-60, max=600),
]


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
    ]
    reasons = quarantine_reasons(conform(table(rows), SPECS), SPECS).to_pylist()
    assert reasons[0] is None and reasons[5] is None
    assert reasons[1] == "month: null (value None)"
    assert reasons[2] == "month: above maximum 12 (value 13)"
    assert reasons[3] == "origin: not in allowed set (value 'BOS')"
    assert "dest: does not match /[A-Z]{3}/ (value 'iah')" in reasons[4]
    assert "delay: below minimum -60 (value -61.0)" in reasons[4]


def test_missing_column_is_a_schema_break():
    with pytest.raises(SchemaError, match=r"missing declared column\(s\) \['delay'\]"):
        conform(table([{"month": 1, "origin": "EWR", "dest": "IAH", "delay": 1.0}]).drop_columns(["delay"]), SPECS)


def test_uncastable_column_names_column_and_type():
    bad = pa.table({"month": ["x"], "origin": ["EWR"], "dest": ["IAH"], "delay": [1.0]})
    with pytest.raises(SchemaError, match="column 'month' has type string"):
        conform(bad, SPECS)


def test_request_model_accepts_what_validation_accepts():
    record = request_model(SPECS)
    ok = record.model_validate({"month": 3, "origin": "JFK", "dest": "LAX", "delay": 12.5, "extra": "ignored"})
    assert ok.month == 3 and ok.delay == 12.5
    assert record.model_validate({"month": 3, "origin": "JFK"}).dest is None


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
