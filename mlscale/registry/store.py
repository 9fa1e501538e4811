"""MLflow as the system of record: experiments, the registered bundle, aliases, and loading by URI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from mlscale.errors import NothingToServe
from mlscale.registry.bundle import BUNDLE_FILE, Bundle
from mlscale.tracking import tracking_client
from mlscale.uris import alias_uri, parse_models_uri, version_uri

PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_model.py")
log = logging.getLogger(__name__)
LABEL_TAG = "mlscale.label"  # the bundle's label spec, readable without downloading the bundle


@dataclass(frozen=True)
class RegisteredBundle:
    """One registered version of a bundle."""

    name: str
    version: str
    run_id: str

    @property
    def version_uri(self) -> str:
        return version_uri(self.name, self.version)

    def alias_uri(self, alias: str) -> str:
        return alias_uri(self.name, alias)


@dataclass
class VersionInfo:
    """A version as `mlscale registry list` shows it: aliases, lineage and the metrics of the run that made it."""

    version: str
    aliases: list[str]
    run_id: str
    created: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # mlscale/: travels with every logged model (code_paths)
# What loading a bundle imports, pinned to the versions that trained it (mlscale itself travels as code).
RUNTIME_REQUIREMENTS = ("torch", "numpy", "pyarrow", "pandas", "pydantic", "PyYAML", "mlflow")
_SIGNATURE_TYPES = {"int": "long", "float": "double", "str": "string"}


def pinned_requirements() -> list[str]:
    """`name==version` of what serving a bundle needs, as installed here (torch without its +cpu/+cu tag)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in RUNTIME_REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:  # e.g. mlflow-skinny installed instead of mlflow
            pinned.append(f"{name}-skinny=={version(name + '-skinny')}" if name == "mlflow" else name)
    return pinned


def model_signature(bundle: Bundle) -> ModelSignature:
    """The input schema as an MLflow signature: what `mlflow models serve` checks requests against.

    MLflow converts neither int64 to double nor a float column back to long, so an optional integer column is
    declared long: a request to `mlflow models serve` that leaves one empty in some rows (pandas then holds the column
    as floats) is refused there; mlscale's own service takes it.
    """
    columns: list[ColSpec | TensorSpec] = [
        ColSpec(_SIGNATURE_TYPES[spec.dtype], spec.name, required=not spec.nullable) for spec in bundle.input_schema]
    return ModelSignature(inputs=Schema(columns), outputs=Schema([ColSpec("double")]))


def register_bundle(bundle: Bundle, model_name: str, input_example: list[dict[str, Any]] | None = None
                    ) -> RegisteredBundle:
    """Log the bundle as a pyfunc model in the active run and register a new version (no alias moved yet).

    The version is tagged with the bundle's lineage, metrics and label spec, so `list_versions` shows where it came
    from and evaluation reads the label without downloading the bundle.

    The logged model stands on its own: the mlscale package travels as code, the requirements are pinned, and the
    signature (from the input schema) and an input example let `mlflow models serve` validate requests.

    Args:
        bundle: the model bundle (weights, fitted features, input schema, label, lineage).
        model_name: the registered model's name.
        input_example: a few raw records (e.g. held-out rows), stored with the model and checked by MLflow.

    Returns:
        The new version.

    Raises:
        RuntimeError: no MLflow run is active.
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
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=pinned_requirements(),
            signature=model_signature(bundle),
            input_example=_example(bundle, input_example),
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {**bundle.lineage, **{k: f"{v:.6g}" for k, v in bundle.metrics.items()}}.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.set_model_version_tag(model_name, version, LABEL_TAG, json.dumps(bundle.label, sort_keys=True))
    return RegisteredBundle(name=model_name, version=version, run_id=run.info.run_id)


def _example(bundle: Bundle, records: list[dict[str, Any]] | None) -> Any:
    if not records:
        return None
    import pandas as pd

    columns = [spec.name for spec in bundle.input_schema]
    return pd.DataFrame([{name: record.get(name) for name in columns} for record in records], columns=columns)


def register_path(directory: str | Path, model_name: str, run_name: str | None = None) -> RegisteredBundle:
    """Register a bundle folder (e.g. one saved by a notebook) as a new version, in a run of its own.

    Args:
        directory: a folder written by `Bundle.save`.
        model_name: the registered model's name.
        run_name: the MLflow run's name (default register-<model_name>).

    Returns:
        The new version.
    """
    bundle = Bundle.load(directory)
    with mlflow.start_run(run_name=run_name or f"register-{model_name}"):
        mlflow.set_tags({f"mlscale.{k}": v for k, v in bundle.lineage.items()} | {"mlscale.stage": "register"})
        return register_bundle(bundle, model_name)


def _client(tracking_uri: str | None) -> MlflowClient:
    return tracking_client(tracking_uri) if tracking_uri else MlflowClient()


def set_alias(model_name: str, alias: str, version: str | int, tracking_uri: str | None = None) -> None:
    """Point the alias (champion, challenger, ...) at a version; serving by alias follows on its next deploy.

    Moving the serving alias after a judgement goes through promotion.apply_decision instead, which checks that
    the alias is still where the judgement saw it.

    Args:
        model_name: the registered model.
        alias: the alias to set or move.
        version: the version it points at afterwards.
        tracking_uri: the store; None uses the process's MLflow setting.
    """
    _client(tracking_uri).set_registered_model_alias(model_name, alias, str(version))


def version_of(model_name: str, alias: str, tracking_uri: str | None = None) -> str | None:
    """The version an alias points at.

    Args:
        model_name: the registered model.
        alias: e.g. champion.
        tracking_uri: the store; None uses the process's MLflow setting.

    Returns:
        The version number as a string, or None when the alias (or the model) is not set.
    """
    try:
        return str(_client(tracking_uri).get_model_version_by_alias(model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def is_version_uri(model_uri: str) -> bool:
    """models:/name/<version>: a registered version, which never changes."""
    parsed = parse_models_uri(model_uri)
    return parsed is not None and parsed[1].isdigit()


def pinned_uri(model_uri: str, tracking_uri: str | None = None) -> str:
    """models:/name@alias as models:/name/<the version it points at now>; any other URI as it is.

    Raises:
        NothingToServe: the alias points at no version.
    """
    parsed = parse_models_uri(model_uri)
    if parsed is None or parsed[1].isdigit():
        return model_uri
    name, alias = parsed
    version = version_of(name, alias, tracking_uri)
    if version is None:
        raise NothingToServe(f"{name}@{alias} points at no version: train and promote a model first "
                             f"(mlscale train, or mlscale registry promote)")
    return version_uri(name, version)


def version_tags(model_uri: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The tags of the registered version a models:/ URI names (empty for other URIs or an unknown version)."""
    parsed = parse_models_uri(model_uri)
    if parsed is None:
        return {}
    name, reference = parsed
    client = _client(tracking_uri)
    try:
        version = (client.get_model_version(name, reference) if reference.isdigit()
                   else client.get_model_version_by_alias(name, reference))
    except mlflow.exceptions.MlflowException:
        return {}
    return dict(version.tags)


def label_of(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """A registered version's label spec from its tags (no download); the bundle itself for older versions."""
    tags = version_tags(model_uri, tracking_uri)
    if LABEL_TAG in tags:
        return json.loads(tags[LABEL_TAG])
    return load_bundle(model_uri, tracking_uri).label


def set_version_tag(model_uri: str, key: str, value: str, tracking_uri: str | None = None) -> None:
    """Tag the version a pinned URI (models:/name/3) names; an alias or a URI outside the registry is refused."""
    parsed = parse_models_uri(model_uri)
    if not parsed or not parsed[1].isdigit():
        raise ValueError(f"not a pinned registry version: {model_uri!r} (expected models:/<name>/<version>)")
    _client(tracking_uri).set_model_version_tag(parsed[0], parsed[1], key, value)


def uri_version(model_uri: str) -> str:
    """The version a pinned URI names: models:/name/3 -> "3"; "" for an alias or a URI outside the registry."""
    parsed = parse_models_uri(model_uri)
    return parsed[1] if parsed and parsed[1].isdigit() else ""


def list_versions(model_name: str) -> list[VersionInfo]:
    """Every version of a registered model, newest first, with aliases and its run's validation/test metrics.

    Args:
        model_name: the registered model.

    Returns:
        One VersionInfo per version.

    Raises:
        MlflowException: the model is not registered.
    """
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
    """Load a bundle; predict with `bundle.predict_records(records)` or `bundle.predict_columns(columns)`.

    Args:
        model_uri: models:/name@alias, models:/name/<version>, runs:/<run>/model, or a local bundle folder.
        tracking_uri: the store to download from; None uses the process's MLflow setting.

    Returns:
        The bundle: network, fitted features, input schema, label spec and lineage (weights loaded without
        executing pickled code).
    """
    if Path(model_uri).exists():
        return Bundle.load(model_uri)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return Bundle.load(local)


def load_pinned_bundle(model_uri: str, tracking_uri: str | None, cache: str | None) -> Bundle:
    """A replica's bundle: a registered version is immutable, so once downloaded it is kept under `cache` (a folder
    every node sees, e.g. `<storage.root>/bundles`) and a replica started later, on any node, loads it from there
    without asking the registry: scale-out and replacement go on while MLflow is down. An alias, a run URI or no
    cache: load_bundle.

    Raises:
        whatever the download raises, when the version is not cached yet and the registry cannot be reached.
    """
    parsed = parse_models_uri(model_uri)
    if cache is None or parsed is None or not parsed[1].isdigit():
        return load_bundle(model_uri, tracking_uri)
    registry = hashlib.sha256((tracking_uri or mlflow.get_tracking_uri()).encode()).hexdigest()[:12]
    folder = Path(cache) / registry / parsed[0] / parsed[1]
    if (folder / BUNDLE_FILE).is_file():
        return Bundle.load(folder)
    bundle = load_bundle(model_uri, tracking_uri)
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        bundle.save(staging)
        os.replace(staging, folder)  # whole or not at all; a replica that lost the race keeps the first copy
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / BUNDLE_FILE).is_file():
            log.warning("bundle cache %s not written (%s): replicas started later need the registry", folder, error)
    return bundle
