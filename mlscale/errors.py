"""One error family: every failure a user can act on is an MlscaleError whose message is the whole story.

The CLI and the jobs print the message (no traceback unless --debug) and exit with the code of its kind, so a
scheduler or a shell script can tell a bad config from bad data from a refused promotion without parsing text.

| exit code | kind |
|---|---|
| 1 | MlscaleError (any other) |
| 2 | ConfigError: the config cannot be used |
| 3 | SourceError / SchemaError / PreparedDataMissing: the data cannot be read as declared |
| 4 | ValidationFailed: too many rows broke the rules (the report names them) |
| 5 | ExpressionError: a validation rule expression cannot be parsed or names an unknown column |
| 6 | PromotionError / NothingToServe / PromotionConflict: the registry refused or had nothing to serve |
| 7 | SearchError / NoWinner: a search produced no usable model |
| 8 | ServingError: the deployed service failed its checks |
| 9 | TrainingFailed: training failed more often than train.max_failures allows (nothing registered) |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_UNSET = object()


def describe_fields(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per invalid field: its dotted path, what is wrong, the value given. Takes pydantic's error items or
    the service's 422 detail (the same shape), so a config, a cluster definition and a request read alike."""
    lines = []
    for item in items:
        where = ".".join(str(part) for part in item.get("loc", ()))
        message = str(item["msg"]).removeprefix("Value error, ")
        value = item.get("input", _UNSET)
        got = "" if value is _UNSET or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{where}: {message}{got}" if where else f"{message}{got}")
    return lines


class MlscaleError(Exception):
    """Base of every error mlscale raises on purpose; its message names the field, value or file at fault."""

    exit_code = 1


class ConfigError(MlscaleError, ValueError):
    """A pipeline config that cannot be used, with a message a person can act on."""

    exit_code = 2


class SourceError(MlscaleError, RuntimeError):
    """A source that cannot be read: the file is named, and the reason."""

    exit_code = 3


class SchemaError(MlscaleError, ValueError):
    """The data does not have the declared columns: a schema break, not a bad row."""

    exit_code = 3


class PreparedDataMissing(SourceError, FileNotFoundError):
    """A stage that reads prepared data ran before the prepare stage wrote any for this pipeline name."""


class ValidationFailed(MlscaleError, RuntimeError):
    """The data broke the validation thresholds; the message is the readable report, kept at report_path."""

    exit_code = 4

    def __init__(self, report: Any, report_path: str) -> None:
        super().__init__(f"{report.render()}\nfull report and quarantined rows kept at {report_path.rsplit('/', 1)[0]}")
        self.report = report
        self.report_path = report_path  # a path or an s3:// URI


class ExpressionError(MlscaleError, ValueError):
    """A rule expression that cannot be parsed, or that uses something other than columns, numbers and arithmetic."""

    exit_code = 5


class PromotionError(MlscaleError, RuntimeError):
    """The registry refused to move an alias, or the decision did not promote."""

    exit_code = 6


class NothingToServe(PromotionError):
    """The model alias that serving loads points at no version (e.g. the first model failed its checks)."""


class PromotionConflict(PromotionError):
    """The champion moved between the decision and its application: the decision is stale and was not applied."""


class SearchError(MlscaleError, RuntimeError):
    """A hyperparameter or architecture search could not produce a model."""

    exit_code = 7


class NoWinner(SearchError):
    """Every trial failed or reported nothing: there is no model to register."""


class TrainingFailed(MlscaleError, RuntimeError):
    """Ray Train gave up: the workers failed more often than train.max_failures allows. Nothing was registered; the
    run's checkpoints stay, so a rerun with the same run name resumes from the last one."""

    exit_code = 9


class ServingError(MlscaleError, RuntimeError):
    """The service answered wrongly: an HTTP error, or predictions that differ from batch scoring."""

    exit_code = 8


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (MlscaleError, ConfigError, SourceError, SchemaError, PreparedDataMissing, ValidationFailed,
                ExpressionError, PromotionError, NothingToServe, PromotionConflict, SearchError, NoWinner,
                ServingError, TrainingFailed)
}
