"""Every stage as a job on the defined cluster through the Ray Jobs API: the command `ray job submit` would run,
the runtime_env that ships the project's code (and nothing it must not: the venv, local stores, results), and the
job's logs, status and stop. Plain `ray job submit -- python jobs/<stage>.py ...` keeps working: this is the same."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from mlscale.errors import ConfigError

REPO_MARKERS = ("jobs", "pyproject.toml")
STAGES = ("pipeline", "prepare", "train", "tune", "deploy", "score", "canary", "monitor", "retrain", "replay")
EXCLUDES = [".venv", ".git", ".mlscale", "mlruns", "mlflow.db", "mlartifacts", "benchmarks/results", "**/__pycache__",
            "*.parquet", "notebooks/.ipynb_checkpoints"]


def job_entrypoint(stage: str, config: str | None = None, overrides: list[str] | None = None) -> str:
    """`python jobs/<stage>.py --config ... --set ...`, quoted for a shell.

    Raises:
        ConfigError: the stage has no job script.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} has no job; known: {', '.join(STAGES)}")
    words = ["python", f"jobs/{stage}.py", *(["--config", config] if config else [])]
    for item in overrides or []:
        words += ["--set", item]
    return " ".join(shlex.quote(word) for word in words)


def job_runtime_env(working_dir: str | Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The project's own code as the job's working_dir (its dependencies are the image's, pinned by the
    constraints file: no job installs anything), with what the job reads from the environment."""
    root = Path(working_dir)
    if not all((root / marker).exists() for marker in REPO_MARKERS):
        raise ConfigError(f"{root} is not an mlscale project (no jobs/ and pyproject.toml): submit from its root")
    return {"working_dir": str(root), "excludes": EXCLUDES, "env_vars": dict(env or {})}


def jobs_address(explicit: str | None = None, connected: bool = False,
                 setting: str = "--address http://<head>:8265") -> str:
    """The Jobs API: the given URL (a bare host:port is http), else RAY_API_SERVER_ADDRESS, else an http
    RAY_ADDRESS (as `ray job` reads), else (connected) the dashboard of the cluster this process is connected to.

    Raises:
        ConfigError: none of them is there; the message names `setting`, the knob to set.
    """
    if explicit:
        if "://" not in explicit:
            return f"http://{explicit}"
        if not explicit.startswith(("http://", "https://")):
            raise ConfigError(f"{setting.split()[0]} {explicit!r}: the Jobs API is an http(s):// URL (the dashboard)")
        return explicit
    for candidate in (os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if candidate and candidate.startswith(("http://", "https://")):
            return candidate
    if connected and (url := _connected_dashboard()):
        return url if "://" in url else f"http://{url}"
    raise ConfigError(f"no Jobs API address: set {setting}, or RAY_API_SERVER_ADDRESS (with the dashboard "
                      "tunnelled, e.g. `ray dashboard cluster/ray-cluster.yaml`)")


def _connected_dashboard() -> str | None:
    import ray._private.worker

    try:
        return ray._private.worker.get_dashboard_url() or None
    except Exception:  # noqa: BLE001 - not connected: the caller says what to configure
        return None


def forwarded_env(names: tuple[str, ...] = ("MLSCALE_STORAGE", "MLFLOW_TRACKING_URI")) -> dict[str, str]:
    """The settings a stage reads from the environment, passed on when set here (credentials stay in the
    cluster's own secrets, never in a job's runtime_env)."""
    return {name: os.environ[name] for name in names if os.environ.get(name)}
