"""The `mlscale` command: the same stages as jobs/, for a terminal, one module per command group.

`app` is the console script's entry point (`mlscale = "mlscale.cli:app"`); importing the group modules registers
their commands on it.
"""

from __future__ import annotations

from mlscale.cli import cluster, config, registry, stages  # noqa: F401 - each registers its commands on `app`
from mlscale.cli.base import app

__all__ = ["app"]
