"""One thin composition per stage: the only place that wires the domain packages together, tracks runs in MLflow
and prints what a person running the stage wants to see. The CLI, jobs/, notebooks and mlscale.pipeline call these.

Imported lazily (PEP 562): `import mlscale.stages.prepare` does not pull in Ray Serve or the tune stage.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "start": "mlscale.stages.common",
    "prepare_stage": "mlscale.stages.prepare",
    "train_stage": "mlscale.stages.train",
    "TrainedModel": "mlscale.stages.train",
    "register_and_judge": "mlscale.stages.judge",
    "Judged": "mlscale.stages.judge",
    "tune_stage": "mlscale.stages.tune",
    "deploy_stage": "mlscale.stages.deploy",
    "served_vs_batch": "mlscale.stages.deploy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlscale.stages' has no attribute {name!r}")
