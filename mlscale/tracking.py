"""MLflow plumbing every layer shares: which store, which experiment, nested runs, and params that hold no secrets.

Lives below the domain packages (a Tune trial logs its own run) and above nothing but the config.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient

from mlscale.config import PipelineConfig
from mlscale.cost import metered
from mlscale.errors import ConfigError

REDACTED = "***"
# Field names whose values are credentials wherever they appear in a config (the user adds more: tracking.secrets).
SECRET_NAME = re.compile(r"(password|passwd|secret|token|credential|api_?key|access_?key)", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per replica and actor is noise


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


def start_tracking(config: PipelineConfig) -> None:
    """MLflow for this process: the configured store and experiment (no Ray needed, e.g. for registry commands)."""
    config.storage.root_path.mkdir(parents=True, exist_ok=True)
    local_store = config.tracking_uri.startswith(("sqlite:", "file:"))
    artifacts = config.storage.root_path / "mlartifacts" if local_store else None  # a server keeps its own
    use_tracking(config.tracking_uri, config.tracking.experiment, artifacts)


def experiment_id(name: str) -> str:
    """The id of an experiment that start_tracking made sure exists."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        raise RuntimeError(f"MLflow experiment {name!r} does not exist: call start_tracking(config) first")
    return str(experiment.experiment_id)


def active_run_id() -> str:
    """The id of the active MLflow run (the stages open one before they log)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run")
    return str(run.info.run_id)


def child_run(name: str, system_metrics: bool = False) -> mlflow.ActiveRun:
    """An MLflow run, nested under the active one when there is one (the pipeline's run, a tuning run);
    system_metrics samples the driver's CPU, memory and disk (and GPU where pynvml is present) while it is open."""
    return mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None,
                            log_system_metrics=system_metrics or None)


@contextmanager
def stage_run(name: str, system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:
    """A stage's MLflow run (`child_run`) that records what the stage cost when it ends: cost_wall_s,
    cost_driver_cpu_s and the cluster's reserved cost_cluster_cpu_s / cost_cluster_gpu_s (mlscale.cost)."""
    with child_run(name, system_metrics) as run:
        with metered() as cost:
            yield run
        mlflow.log_metrics({f"cost_{key}": value for key, value in cost.to_dict().items()})


def redact_url(text: str) -> str:
    """Credentials out of every URL in the text: the password of user:password@host and secret query values."""

    def clean(match: re.Match[str]) -> str:
        parts = urlsplit(match.group(0))
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(key, REDACTED if SECRET_NAME.search(key) else value) for key, value in pairs],
                              safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    return _URL_IN_TEXT.sub(clean, text)


def _credentials(prefix: str, value: str, declared: set[str]) -> list[str]:
    """The credentials inside one config value: all of it (a secret-named or declared field), or the passwords and
    secret query values of the URLs in it."""
    leaf = prefix.rsplit(".", 1)[-1]
    names_a_secret = leaf == "secrets" or leaf.endswith(("_env", "_file", "_path"))  # where one is, not what
    if prefix in declared or SECRET_NAME.search(leaf) and not names_a_secret:
        return [value]
    found = []
    for match in _URL_IN_TEXT.finditer(value):
        parts = urlsplit(match.group(0))
        userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        found += [inner for key, inner in parse_qsl(parts.query, keep_blank_values=True) if SECRET_NAME.search(key)]
    return [secret for secret in found if secret]


def by_reference(value: str | None, field: str, declared: set[str] | None = None,
                 environ: dict[str, str] | None = None) -> str | None:
    """One config value with every credential in it replaced by a `${VAR}` reference to the environment variable
    of this process that holds it, for what leaves the process (a job's command, a Serve config): the receiving
    process expands it from its own environment (`mlscale.config.expand_env`).

    Raises:
        ConfigError: a credential that no environment variable holds (it would have to travel in clear).
    """
    if value is None:
        return None
    environ = dict(os.environ) if environ is None else environ
    for secret in _credentials(field, value, declared or set()):
        if secret.startswith("${") and secret.endswith("}"):
            continue  # already a reference
        holder = next((name for name, held in sorted(environ.items()) if held == secret), None)
        if holder is None:
            raise ConfigError(f"{field} holds a credential that no environment variable of this process holds: it "
                              f"would travel in clear in a job's command or a Serve config, which anyone who can "
                              f"list jobs or read the dashboard sees. Set it from an environment variable (${{VAR}} "
                              f"in the config) that the cluster's processes have too")
        value = value.replace(secret, f"${{{holder}}}")
    return value


def _map_leaves(config: PipelineConfig, leaf: Callable[[str, Any], Any]) -> dict[str, Any]:
    """The config as plain data with every leaf value replaced by leaf(dotted field, value) (list items share
    their list's field)."""

    def walk(prefix: str, node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(f"{prefix}.{key}" if prefix else key, inner) for key, inner in node.items()}
        if isinstance(node, list):
            return [walk(prefix, inner) for inner in node]
        return leaf(prefix, node)

    return walk("", config.model_dump(mode="json", by_alias=True))


def config_by_reference(config: PipelineConfig) -> dict[str, Any]:
    """The whole config as plain data with every credential as a `${VAR}` reference (see by_reference)."""
    declared = set(config.tracking.secrets)

    def reference(prefix: str, value: Any) -> Any:
        if isinstance(value, str):
            return by_reference(value, prefix, declared)
        if prefix in declared and value is not None:
            return by_reference(json.dumps(value), prefix, declared)
        return value

    return _map_leaves(config, reference)


def redacted_config(config: PipelineConfig) -> dict[str, Any]:
    """The config as plain data with no credentials in it: URLs lose their passwords and secret query values, and
    fields whose name says secret (password, token, ...) or that `tracking.secrets` lists become ***. What is
    logged to MLflow and what `mlscale config show` prints."""
    declared = set(config.tracking.secrets)

    def clean(prefix: str, value: Any) -> Any:
        if not isinstance(value, str):  # numbers and flags are never credentials (d_token is a width)
            return REDACTED if prefix in declared and value is not None else value
        leaf = prefix.rsplit(".", 1)[-1]
        if prefix in declared or SECRET_NAME.search(leaf) and not leaf.endswith("_env"):
            return REDACTED
        return redact_url(value)

    return _map_leaves(config, clean)


def flat_params(config: PipelineConfig, section: str | None = None) -> dict[str, str]:
    """The config as MLflow params (dotted names, redacted by redacted_config): all but the search settings and the
    data schema, or one section."""
    data = redacted_config(config)
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif value is not None:
            flat[prefix] = str(value)[:500]

    if section is not None:
        walk(section, data[section])
    else:
        data.pop("tune")
        data["data"].pop("schema")
        walk("", data)
    return flat
