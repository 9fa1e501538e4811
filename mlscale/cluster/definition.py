"""The one cluster definition (cluster/definition.yaml): node groups, image, storage, tracking and secrets, typed.

Every file the cluster runs from is generated from it (`mlscale.cluster.render`), which is what keeps one image,
one Ray version, one set of node groups, one storage and tracking URI and one set of secrets everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import Field, ValidationError, model_validator

from mlscale.config.base import StrictModel
from mlscale.errors import ConfigError, describe_fields

GENERATED = "# Generated from cluster/definition.yaml by `mlscale cluster render`: edit the definition instead.\n"
DASHBOARD_PORT = 8265
SERVE_PORT = 8000
# the definition's secrets a Ray pod reads, and the variable each becomes (MLflow's own names for its credentials;
# the service's `serve.api_keys_env`); the Ray token is KubeRay's to mount (authOptions)
SECRET_ENV = {"mlflow_username": "MLFLOW_TRACKING_USERNAME", "mlflow_password": "MLFLOW_TRACKING_PASSWORD",
              "serve_api_keys": "MLSCALE_SERVE_API_KEYS"}


# the MLflow server's secrets and the variables it reads them from (MLflow's own names; the backend store URI is
# expanded into its command line by Kubernetes)
MLFLOW_SERVER_SECRET_ENV = {"mlflow_backend_store": "MLFLOW_BACKEND_STORE_URI",
                            "mlflow_admin_username": "MLFLOW_AUTH_ADMIN_USERNAME",
                            "mlflow_admin_password": "MLFLOW_AUTH_ADMIN_PASSWORD",
                            "mlflow_flask_secret_key": "MLFLOW_FLASK_SERVER_SECRET_KEY"}
MLFLOW_AUTH_CONFIG = "/etc/mlflow/basic_auth.ini"
# the user the Ray pods sign in as, as the Job that creates it (mlscale.registry.users) reads it
MLFLOW_USER_ENV = {"mlflow_username": "MLSCALE_MLFLOW_USER", "mlflow_password": "MLSCALE_MLFLOW_USER_PASSWORD"}


class SecretRef(StrictModel):
    secret: str
    key: str


class NodeGroup(StrictModel):
    cpu: int = Field(..., ge=0)
    memory_gib: int = Field(..., ge=1)
    gpu: int = Field(0, ge=0)
    instance_type: str
    capacity: Literal["spot", "on-demand"] = "on-demand"


class WorkerGroup(NodeGroup):
    name: str = Field(..., pattern=r"^[a-z][a-z0-9-]*$")
    image: Literal["cpu", "gpu"]
    min: int = Field(..., ge=0)
    max: int = Field(..., ge=1)
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources (e.g. serve).")

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        if self.min > self.max:
            raise ValueError(f"worker group {self.name}: min {self.min} > max {self.max}")
        if self.gpu and self.image != "gpu":
            raise ValueError(f"worker group {self.name} has GPUs but pulls the {self.image} image")
        return self


class Autoscaling(StrictModel):
    idle_timeout_minutes: int = Field(10, ge=1)
    upscaling_speed: float = Field(1.0, gt=0)


class Aws(StrictModel):
    region: str
    ami: str
    security_group_id: str = Field(
        ..., pattern=r"^sg-[0-9a-f]{8,17}$",
        description="A pre-created group every node joins, admitting only the cluster itself (a self-referencing "
                    "rule) and whatever reaches it on purpose (a bastion, a load balancer). Named by id: given no "
                    "group, Ray's AWS provider creates one and opens SSH to 0.0.0.0/0.")
    shared_filesystem: str


class Kubernetes(StrictModel):
    shared_volume_claim: str
    ingress_namespace: str = Field("ingress-nginx", description="The only namespace that may reach the serve port.")
    capacity_labels: dict[Literal["spot", "on-demand"], dict[str, str]]


class MlflowServer(StrictModel):
    """The tracking server and registry every stage writes to, with MLflow's basic auth: every request signs in;
    a user writes only what they created or were granted, and reads the rest per default_permission (never EDIT or
    MANAGE: that would let any signed-in user move any model's aliases)."""
    image: str
    port: int = Field(5000, ge=1, le=65535)
    replicas: int = Field(1, ge=1)
    default_permission: Literal["READ", "NO_PERMISSIONS"] = "READ"
    artifacts_destination: str = Field(..., description="Where the server keeps artifacts it proxies (s3://...).")
    auth_volume_claim: str = Field(
        "mlflow-auth", description="The volume only the MLflow server mounts, holding its user database (users, "
                                   "passwords, permissions): never the shared volume every Ray pod writes, where any "
                                   "job could make its user an admin. ReadWriteOnce: one server replica.")
    auth_cache_ttl_s: int = Field(60, ge=0, description="How long a verified sign-in is cached per worker: each "
                                                        "check is a PBKDF2 hash (~0.5 s on 2 CPUs), and registering "
                                                        "one model makes dozens of requests; a changed password "
                                                        "reaches other workers after at most this long. 0: off.")


class Jobs(StrictModel):
    """What every stage's driver asks for: a CPU and the `driver` resource, which only on-demand groups carry, so
    a reclaimed spot node never takes a driver (and the run it coordinates) with it, and the head only schedules."""
    entrypoint_num_cpus: float = Field(1, ge=0)
    entrypoint_resources: dict[str, float] = Field(default_factory=lambda: {"driver": 1.0})


class ClusterDefinition(StrictModel):
    name: str = Field(..., pattern=r"^[a-z][a-z0-9-]*$")
    ray_version: str
    python: str
    images: dict[Literal["cpu", "gpu"], str]
    storage_uri: str
    tracking_uri: str
    env: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, SecretRef]
    head: NodeGroup
    worker_groups: list[WorkerGroup] = Field(..., min_length=1)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    jobs: Jobs = Field(default_factory=Jobs)
    mlflow: MlflowServer | None = None
    aws: Aws
    kubernetes: Kubernetes

    @model_validator(mode="after")
    def _consistent(self) -> ClusterDefinition:
        if self.head.capacity != "on-demand":
            raise ValueError("head.capacity must be on-demand: the head holds the cluster's state (GCS)")
        for kind, image in self.images.items():
            if f"ray{self.ray_version}" not in image or f"py{self.python.replace('.', '')}" not in image:
                raise ValueError(f"images.{kind} {image!r} does not name ray{self.ray_version} and "
                                 f"py{self.python.replace('.', '')}")
        for name in self.jobs.entrypoint_resources:
            hosts = [group for group in self.worker_groups if group.resources.get(name)]
            if not hosts:
                raise ValueError(f"jobs.entrypoint_resources names {name!r}, which no worker group has: "
                                 "no driver could start")
            if any(group.capacity == "spot" for group in hosts):
                raise ValueError(f"jobs.entrypoint_resources {name!r} is on a spot group: a reclaimed node "
                                 "would take the driver with it")
        if any(group.capacity == "spot" and "serve" in group.resources for group in self.worker_groups):
            raise ValueError("the `serve` resource is on a spot group: model replicas ask for it, and the service's "
                             "capacity must not be reclaimed under it")
        if "ray_token" not in self.secrets:
            raise ValueError("secrets.ray_token is required: token authentication stays on in every definition")
        if self.mlflow is not None:
            missing = [key for key in (*MLFLOW_SERVER_SECRET_ENV, "mlflow_username", "mlflow_password")
                       if key not in self.secrets]
            if missing:
                raise ValueError(f"mlflow: secrets {', '.join(missing)} are required (the server's store, its admin "
                                 f"and CSRF key; the user the Ray pods sign in as)")
            port = urlparse(self.tracking_uri).port
            if port != self.mlflow.port:
                raise ValueError(f"tracking_uri {self.tracking_uri!r} does not reach the MLflow server's port "
                                 f"{self.mlflow.port}")
        return self

    @property
    def shared_env(self) -> dict[str, str]:
        return {"MLSCALE_STORAGE": self.storage_uri, "MLFLOW_TRACKING_URI": self.tracking_uri, **self.env}


class PlainDumper(yaml.SafeDumper):
    """No &anchors / *aliases for repeated blocks: each manifest reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    """Multi-line text (an embedded Serve config, an ini file) as a `|` block that reads like the file it is."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


PlainDumper.add_representer(str, _block_text)


def load_definition(path: str | Path) -> ClusterDefinition:
    """The definition at path.

    Raises:
        ConfigError: the file is missing, not YAML, or not a valid definition (the message names the field).
    """
    try:
        return ClusterDefinition.model_validate(yaml.safe_load(Path(path).read_text()))
    except OSError as error:
        raise ConfigError(f"cluster definition {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"cluster definition {path} is not YAML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(describe_fields(error.errors()))
        raise ConfigError(f"cluster definition {path}: {problems}") from None
