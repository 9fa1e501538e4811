"""MLflow as the system of record: experiments, the registered bundle, aliases, and loading by URI."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

import mlscale
from mlscale.registry.bundle import Bundle

PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_model.py")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per replica and actor is noise


@dataclass(frozen=True)
class RegisteredBundle:
    name: str
    version: str
    alias: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    @property
    def version_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def use_tracking(tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id.

    A local store gets an explicit artifact folder beside it, so artifacts never land in the current directory.
    """
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        mlflow.set_experiment(experiment_id=existing.experiment_id)
        return existing.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_and_register(bundle: Bundle, model_name: str, alias: str) -> RegisteredBundle:
    """Log the bundle as a pyfunc model in the active run and register a new version (alias not moved yet)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = bundle.save(Path(tmp) / "bundle")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_ENTRY),
            artifacts={"bundle": str(bundle_dir)},
            pip_requirements=[f"mlscale=={mlscale.__version__}", "torch", "pyarrow", "numpy", "pandas"],
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in bundle.lineage.items():
        client.set_model_version_tag(model_name, version, key, value)
    return RegisteredBundle(name=model_name, version=version, alias=alias, run_id=run.info.run_id)


def promote(registered: RegisteredBundle) -> None:
    """Point the alias (e.g. champion) at this version; serving by alias picks it up on the next deploy."""
    MlflowClient().set_registered_model_alias(registered.name, registered.alias, registered.version)


def load_bundle(model_uri: str, tracking_uri: str | None = None) -> Bundle:
    """Load a bundle from models:/name@alias, models:/name/version, runs:/..., or a local folder."""
    if Path(model_uri).exists():
        return Bundle.load(model_uri)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return Bundle.load(local)
