"""Cross-column rules written as Python expressions, compiled to vectorized pyarrow.compute calls.

Only a small, safe subset is accepted (column names, numbers, strings, arithmetic, comparisons, and/or/not, abs),
parsed with `ast`, never `eval`: a rule from a YAML file cannot run arbitrary code.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlscale.errors import ExpressionError

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: pc.add, ast.Sub: pc.subtract, ast.Mult: pc.multiply, ast.Div: pc.divide,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: pc.less, ast.LtE: pc.less_equal, ast.Gt: pc.greater, ast.GtE: pc.greater_equal,
    ast.Eq: pc.equal, ast.NotEq: pc.not_equal,
}


def columns_of(expr: str) -> list[str]:
    """The column names an expression reads, in order of appearance."""
    nodes = [node for node in ast.walk(_parse(expr)) if isinstance(node, ast.Name) and node.id != "abs"]
    return list(dict.fromkeys(node.id for node in sorted(nodes, key=lambda node: node.col_offset)))


def _parse(expr: str) -> ast.expr:
    try:
        return ast.parse(expr, mode="eval").body
    except SyntaxError as error:
        raise ExpressionError(f"rule expression {expr!r} is not valid: {error.msg}") from None


def evaluate(expr: str, table: pa.Table) -> pa.ChunkedArray | pa.Array:
    """The expression's value for every row; numbers are computed as float64 (no integer division surprises)."""

    def visit(node: ast.expr) -> Any:
        if isinstance(node, ast.Name):
            if node.id not in table.column_names:
                raise ExpressionError(f"rule expression {expr!r} names unknown column {node.id!r}")
            column = table.column(node.id)
            return pc.cast(column, pa.float64()) if pa.types.is_integer(column.type) else column
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str) \
                and not isinstance(node.value, bool):
            return pa.scalar(float(node.value) if isinstance(node.value, int) else node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](visit(node.left), visit(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return pc.negate(visit(node.operand))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return pc.invert(visit(node.operand))
        if isinstance(node, ast.BoolOp):
            combine = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
            result = visit(node.values[0])
            for value in node.values[1:]:
                result = combine(result, visit(value))
            return result
        if isinstance(node, ast.Compare):
            result, left = None, visit(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                if type(op) not in _COMPARE:
                    raise ExpressionError(f"rule expression {expr!r}: comparison {type(op).__name__} not supported")
                right = visit(right_node)
                part = _COMPARE[type(op)](left, right)
                result = part if result is None else pc.and_kleene(result, part)
                left = right
            return result
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "abs" \
                and len(node.args) == 1:
            return pc.abs(visit(node.args[0]))
        raise ExpressionError(f"rule expression {expr!r}: {ast.unparse(node)!r} is not supported")

    return visit(_parse(expr))
