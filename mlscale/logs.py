"""Logging for mlscale: one logger per module under `mlscale`, shown as `[mlscale.<module>] message` lines.

Library code only logs; the CLI, the jobs and Ray workers call configure_logging() so a terminal or a job log shows
where a run is. A notebook or an application keeps its own logging setup.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

FORMAT = "[%(name)s] %(message)s"
SUMMARY_PREFIX = "MLSCALE_SUMMARY "  # a stage's summary as one JSON line in its output (jobs' logs are parsed)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (a test runner or a notebook swaps it)."""

    _mlscale = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging(level: str | None = None) -> None:
    """Send mlscale's log records to stderr at `level` (default $MLSCALE_LOG_LEVEL, else INFO); idempotent."""
    logger = logging.getLogger("mlscale")
    logger.setLevel((level or os.environ.get("MLSCALE_LOG_LEVEL") or "INFO").upper())
    if not any(isinstance(handler, _CurrentStderr) for handler in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
        logger.propagate = False  # one line per record, whatever the root logger does


def summary_line(summary: dict[str, Any]) -> str:
    """A stage's summary as the one line its job log carries."""
    return SUMMARY_PREFIX + json.dumps(summary, default=str)


def summary_from_logs(logs: str) -> dict[str, Any] | None:
    """The last summary line in a job's logs (None: the job ended before it printed one)."""
    return next((json.loads(line[len(SUMMARY_PREFIX):]) for line in reversed(logs.splitlines())
                 if line.startswith(SUMMARY_PREFIX)), None)
