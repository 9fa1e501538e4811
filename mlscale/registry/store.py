"""MLflow as the system of record: experiments, the registered bundle, aliases, and loading by URI."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient

import mlscale
from mlscale.registry.bundle import Bundle

PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_model.py")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per replica and actor is noise


@dataclass(frozen=True)
class RegisteredBundle:
    """One registered version of a bundle."""

    name: str
    version: str
    run_id: str

    @property
    def version_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def alias_uri(self, alias: str) -> str:
        return f"models:/{self.name}@{alias}"


@dataclass
class VersionInfo:
    """A version as `mlscale registry list` shows it: aliases, lineage and the metrics of the run that made it."""

    version: str
    aliases: list[str]
    run_id: str
    created: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def tracking_client(tracking_uri: str) -> MlflowClient:
    """A client for one store, registry included.

    `MlflowClient(uri)` alone takes the registry from MLflow's process-wide setting, which may point at another store.
    """
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


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


def register_bundle(bundle: Bundle, model_name: str) -> RegisteredBundle:
    """Log the bundle as a pyfunc model in the active run and register a new version (no alias moved yet).

    The version is tagged with the bundle's lineage and metrics, so `list_versions` shows where it came from.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_bundle needs an active MLflow run")
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
    for key, value in {**bundle.lineage, **{k: f"{v:.6g}" for k, v in bundle.metrics.items()}}.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    return RegisteredBundle(name=model_name, version=version, run_id=run.info.run_id)


def register_path(directory: str | Path, model_name: str, run_name: str | None = None) -> RegisteredBundle:
    """Register a bundle folder (e.g. one saved by a notebook) as a new version, in a run of its own."""
    bundle = Bundle.load(directory)
    with mlflow.start_run(run_name=run_name or f"register-{model_name}"):
        mlflow.set_tags({f"mlscale.{k}": v for k, v in bundle.lineage.items()} | {"mlscale.stage": "register"})
        return register_bundle(bundle, model_name)


def set_alias(model_name: str, alias: str, version: str | int) -> None:
    """Point the alias (champion, challenger, ...) at a version; serving by alias follows on its next deploy."""
    MlflowClient().set_registered_model_alias(model_name, alias, str(version))


def version_of(model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias is not set."""
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def promote(model_name: str, source_alias: str = "challenger", target_alias: str = "champion") -> str:
    """Move target_alias to the version source_alias points at; the old target stays reachable as previous_<target>.

    Returns the promoted version.
    """
    version = version_of(model_name, source_alias)
    if version is None:
        raise ValueError(f"model {model_name!r} has no version with alias {source_alias!r}")
    previous = version_of(model_name, target_alias)
    if previous is not None and previous != version:
        set_alias(model_name, f"previous_{target_alias}", previous)
    set_alias(model_name, target_alias, version)
    return version


def list_versions(model_name: str) -> list[VersionInfo]:
    """Every version of a registered model, newest first, with aliases and its run's validation/test metrics."""
    client = MlflowClient()
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(model_name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    found = []
    for version in client.search_model_versions(f"name = '{model_name}'"):
        metrics = {}
        if version.run_id:
            metrics = {k: v for k, v in client.get_run(version.run_id).data.metrics.items()
                       if k.startswith(("val_", "test_"))}
        found.append(VersionInfo(
            version=str(version.version), aliases=sorted(aliases.get(str(version.version), [])),
            run_id=version.run_id or "", created=str(version.creation_timestamp), metrics=metrics,
            tags=dict(version.tags),
        ))
    return sorted(found, key=lambda info: int(info.version), reverse=True)


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
