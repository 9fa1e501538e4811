"""One cluster definition (cluster/definition.yaml) and the files generated from it: the Ray cluster launcher YAML
and the KubeRay RayCluster, RayJob, RayService, the monitor's CronJob and the MLflow server (basic auth). Generating
them is what keeps one image, one Ray version, one set of node groups, one storage and tracking URI and one set of
secrets everywhere."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretRef(_Strict):
    secret: str
    key: str


class NodeGroup(_Strict):
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


class Autoscaling(_Strict):
    idle_timeout_minutes: int = Field(10, ge=1)
    upscaling_speed: float = Field(1.0, gt=0)


class Aws(_Strict):
    region: str
    ami: str
    security_group_id: str = Field(
        ..., pattern=r"^sg-[0-9a-f]{8,17}$",
        description="A pre-created group every node joins, admitting only the cluster itself (a self-referencing "
                    "rule) and whatever reaches it on purpose (a bastion, a load balancer). Named by id: given no "
                    "group, Ray's AWS provider creates one and opens SSH to 0.0.0.0/0.")
    shared_filesystem: str


class Kubernetes(_Strict):
    shared_volume_claim: str
    ingress_namespace: str = Field("ingress-nginx", description="The only namespace that may reach the serve port.")
    capacity_labels: dict[Literal["spot", "on-demand"], dict[str, str]]


class MlflowServer(_Strict):
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


class Jobs(_Strict):
    """What every stage's driver asks for: a CPU and the `driver` resource, which only on-demand groups carry, so
    a reclaimed spot node never takes a driver (and the run it coordinates) with it, and the head only schedules."""
    entrypoint_num_cpus: float = Field(1, ge=0)
    entrypoint_resources: dict[str, float] = Field(default_factory=lambda: {"driver": 1.0})


class ClusterDefinition(_Strict):
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


class _PlainDumper(yaml.SafeDumper):
    """No &anchors / *aliases for repeated blocks: each manifest reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    """Multi-line text (an embedded Serve config, an ini file) as a `|` block that reads like the file it is."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_PlainDumper.add_representer(str, _block_text)


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


def launcher(definition: ClusterDefinition) -> dict[str, Any]:
    """The Ray cluster launcher YAML (`ray up`): spot market options per node type, every node in the definition's
    pre-created security group (by id, so Ray's provider creates none and opens nothing), the dashboard on loopback
    behind token auth."""
    env = {"RAY_AUTH_MODE": "token", **definition.shared_env}
    mount = definition.storage_uri if definition.storage_uri.startswith("/") else None
    node_types: dict[str, Any] = {"head": {"resources": {"CPU": 0}, "node_config": _aws_node(definition,
                                                                                              definition.head)}}
    for group in definition.worker_groups:
        node_types[f"{group.name}_worker"] = {
            "min_workers": group.min, "max_workers": group.max,
            "resources": {**({"GPU": group.gpu} if group.gpu else {}), **group.resources},
            "node_config": _aws_node(definition, group)}
    return {
        "cluster_name": definition.name,
        "max_workers": sum(group.max for group in definition.worker_groups),
        "upscaling_speed": definition.autoscaling.upscaling_speed,
        "idle_timeout_minutes": definition.autoscaling.idle_timeout_minutes,
        "provider": {"type": "aws", "region": definition.aws.region, "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {
            "image": definition.images["cpu"], "worker_image": definition.images.get("gpu", definition.images["cpu"]),
            "container_name": definition.name, "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536", "--shm-size=8g",
                            *([f"-v {mount}:{mount}"] if mount else []),
                            *(f"--env {name}={value}" for name, value in env.items())]},
        "file_mounts": {"~/.ray/auth_token": "~/.ray/auth_token"},
        "initialization_commands": [
            f"sudo mkdir -p {mount} && (mountpoint -q {mount} || sudo mount -t nfs4 -o nfsvers=4.1 "
            f"{definition.aws.shared_filesystem} {mount})"] if mount else [],
        "available_node_types": node_types,
        "head_node_type": "head",
        "setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            "RAY_AUTH_MODE=token ray start --head --port=6379 --object-manager-port=8076 "
            "--dashboard-host=127.0.0.1 --autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats"],
        "worker_start_ray_commands": [
            "ray stop",
            "RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076 "
            "--disable-usage-stats"],
    }


def _aws_node(definition: ClusterDefinition, group: NodeGroup) -> dict[str, Any]:
    node: dict[str, Any] = {"InstanceType": group.instance_type, "ImageId": definition.aws.ami,
                            "SecurityGroupIds": [definition.aws.security_group_id]}
    if group.capacity == "spot":
        node["InstanceMarketOptions"] = {"MarketType": "spot"}
    return node


def _secret_env(definition: ClusterDefinition, names: dict[str, str]) -> list[dict[str, Any]]:
    """Environment variables from the definition's secrets (a reference to each, never its value)."""
    return [{"name": variable, "valueFrom": {"secretKeyRef": {"name": definition.secrets[key].secret,
                                                              "key": definition.secrets[key].key}}}
            for key, variable in names.items() if key in definition.secrets]


_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100,
                 "seccompProfile": {"type": "RuntimeDefault"}}


def raycluster_spec(definition: ClusterDefinition) -> dict[str, Any]:
    """The RayCluster spec (also the RayService's rayClusterConfig): token auth, a head that schedules only, one
    worker group per definition group on its capacity type, non-root pods."""
    env = [*({"name": name, "value": value} for name, value in definition.shared_env.items()),
           *_secret_env(definition, SECRET_ENV)]
    mounts = [{"name": "shared", "mountPath": definition.storage_uri}] if definition.storage_uri.startswith("/") \
        else []
    volumes = [{"name": "shared", "persistentVolumeClaim": {"claimName": definition.kubernetes.shared_volume_claim}}] \
        if mounts else []

    def pod(name: str, image: str, group: NodeGroup, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        resources = {"cpu": str(group.cpu), "memory": f"{group.memory_gib}Gi",
                     **({"nvidia.com/gpu": str(group.gpu)} if group.gpu else {})}
        container: dict[str, Any] = {"name": name, "image": image,
                                     "resources": {"limits": resources, "requests": dict(resources)}, "env": env,
                                     "securityContext": dict(_CONTAINER_SECURITY)}
        if ports:
            container["ports"] = ports
        if mounts:
            container["volumeMounts"] = mounts
        spec: dict[str, Any] = {"securityContext": dict(_POD_SECURITY),
                                "containers": [container],
                                "nodeSelector": definition.kubernetes.capacity_labels[group.capacity]}
        if volumes:
            spec["volumes"] = volumes
        if group.gpu:
            spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        return {"metadata": {"labels": _labels(definition)}, "spec": spec}

    ports = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": DASHBOARD_PORT, "name": "dashboard"},
             {"containerPort": SERVE_PORT, "name": "serve"}]
    workers = []
    for group in definition.worker_groups:
        params = {"disable-usage-stats": "true"}
        if group.resources:
            params["resources"] = json.dumps(group.resources)  # `ray start --resources` reads it with json.loads
        workers.append({"groupName": group.name, "replicas": group.min, "minReplicas": group.min,
                        "maxReplicas": group.max, "rayStartParams": params,
                        "template": pod("ray-worker", definition.images[group.image], group)})
    return {
        "rayVersion": definition.ray_version,
        "enableInTreeAutoscaling": True,
        "authOptions": {"mode": "token"},
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "disable-usage-stats": "true"},
                          "template": pod("ray-head", definition.images["cpu"], definition.head, ports)},
        "workerGroupSpecs": workers,
    }


def _labels(definition: ClusterDefinition, **extra: str) -> dict[str, str]:
    """The name label every object of the cluster carries: the NetworkPolicy selects its pods by it."""
    return {"app.kubernetes.io/name": definition.name, **extra}


def _metadata(definition: ClusterDefinition, name: str) -> dict[str, Any]:
    return {"name": name, "labels": _labels(definition)}


def raycluster(definition: ClusterDefinition) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": _metadata(definition, definition.name),
            "spec": raycluster_spec(definition)}


def cluster_serve(definition: ClusterDefinition) -> dict[str, Any]:
    """The service's serve settings on this cluster: one source for the RayService's application and for every job
    submitted to the cluster (a deploy, a canary, a retrain), so a job never replaces the keyed, autoscaled
    service with the example config's open one."""
    return {"app_name": definition.name, "route_prefix": "/", "max_batch_size": 64,
            **({"api_keys_env": SECRET_ENV["serve_api_keys"]} if "serve_api_keys" in definition.secrets else {}),
            # replicas only where a group carries `serve` (on-demand: validated)
            **({"replica_resources": {"serve": 1}}
               if any("serve" in group.resources for group in definition.worker_groups) else {}),
            "autoscaling": {"min_replicas": 2, "max_replicas": 8, "target_ongoing_requests": 16}}


def serve_overrides(definition: ClusterDefinition) -> list[str]:
    """cluster_serve as the `--set serve.<field>=<json>` arguments of a job's command."""
    return [f"--set {shlex.quote(f'serve.{name}={json.dumps(value)}')}"
            for name, value in cluster_serve(definition).items()]


def rayjob(definition: ClusterDefinition, stage: str = "pipeline",
           config: str = "jobs/configs/flights.yaml") -> dict[str, Any]:
    """A stage as a RayJob on the defined RayCluster (selected by name: the cluster is defined once); its driver
    asks for the definition's entrypoint resources, so it lands on on-demand capacity, not on the head that only
    schedules nor on a spot node."""
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": _metadata(definition, f"{definition.name}-{stage}"),
            "spec": {"clusterSelector": {"ray.io/cluster": definition.name},
                     "entrypoint": " ".join([f"python jobs/{stage}.py --config {config}",
                                             *serve_overrides(definition)]),
                     "entrypointNumCpus": definition.jobs.entrypoint_num_cpus,
                     "entrypointResources": json.dumps(definition.jobs.entrypoint_resources),
                     "runtimeEnvYAML": yaml.safe_dump({"working_dir": "/opt/mlscale",
                                                       "env_vars": definition.shared_env}, sort_keys=False),
                     "submissionMode": "K8sJobMode", "activeDeadlineSeconds": 7200, "backoffLimit": 1,
                     "shutdownAfterJobFinishes": False}}


def rayservice(definition: ClusterDefinition, model_uri: str = "models:/flights-late-arrival@champion"
               ) -> dict[str, Any]:
    """The model service: the RayCluster's own spec, and the Serve app for the registered champion (with the API
    keys from their secret, as the pods' environment, when the definition names one). Not `serve_config_document`:
    that pins the alias to a version through the registry when it is written, while this is rendered offline from
    the definition alone and follows the alias each time KubeRay starts a cluster for it."""
    settings = cluster_serve(definition)
    app_args = {name: value for name, value in settings.items() if name not in ("app_name", "route_prefix")}
    serve_config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT, "request_timeout_s": 30},  # inside the pod
        "applications": [{"name": settings["app_name"], "route_prefix": settings["route_prefix"],
                          "import_path": "mlscale.serve.app:app_builder",
                          "args": {"model_uri": model_uri, "tracking_uri": definition.tracking_uri, **app_args}}]}
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": _metadata(definition, definition.name),
            "spec": {"upgradeStrategy": {"type": "NewCluster"},
                     "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
                     "rayClusterConfig": raycluster_spec(definition)}}


def monitor_cronjob(definition: ClusterDefinition, config: str = "jobs/configs/flights.yaml",
                    schedule: str = "17 * * * *") -> dict[str, Any]:
    """The monitor on a schedule: KubeRay v1.7.0 has no cron for RayJobs, so a CronJob submits it to the
    RayCluster's head service with the cluster's token (from its secret), never overlapping itself."""
    token = definition.secrets["ray_token"]
    env = [{"name": "RAY_AUTH_MODE", "value": "token"},
           {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.secret, "key": token.key}}},
           *({"name": name, "value": value} for name, value in definition.shared_env.items())]
    container = {
        "name": "submit-monitor", "image": definition.images["cpu"],
        "command": ["ray", "job", "submit", "--address", f"http://{definition.name}-head-svc:{DASHBOARD_PORT}",
                    "--entrypoint-num-cpus", str(definition.jobs.entrypoint_num_cpus),
                    "--entrypoint-resources", json.dumps(definition.jobs.entrypoint_resources),
                    "--", "python", "jobs/monitor.py", "--config", config,
                    *(word for override in serve_overrides(definition) for word in shlex.split(override))],
        "env": env,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": {**_CONTAINER_SECURITY, "readOnlyRootFilesystem": True}}  # it writes nothing
    pod = {"metadata": {"labels": _labels(definition, **{"app.kubernetes.io/component": "monitor"})},
           "spec": {"restartPolicy": "Never", "securityContext": dict(_POD_SECURITY), "containers": [container]}}
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": _metadata(definition, f"{definition.name}-monitor"),
            "spec": {"schedule": schedule, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 600,
                     "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 5,
                     "jobTemplate": {"spec": {"backoffLimit": 0, "activeDeadlineSeconds": 7200, "template": pod}}}}


MLFLOW_AUTH_DIR = "/var/lib/mlflow-auth"  # the server's own volume (auth_volume_claim), mounted by nothing else


def mlflow_auth_ini(definition: ClusterDefinition, database_uri: str | None = None) -> str:
    """The server's basic_auth.ini: no credentials in it (the admin's come from MLFLOW_AUTH_ADMIN_* secrets); its
    user database on the server's own volume unless database_uri says otherwise."""
    assert definition.mlflow is not None
    database = database_uri or f"sqlite:///{MLFLOW_AUTH_DIR}/auth.db"
    return ("[mlflow]\n"
            f"default_permission = {definition.mlflow.default_permission}\n"
            f"database_uri = {database}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n"
            f"auth_cache_ttl_seconds = {definition.mlflow.auth_cache_ttl_s}\n")


def mlflow_server_command(definition: ClusterDefinition, host: str = "0.0.0.0") -> list[str]:
    """`mlflow server` with basic auth, its store from $MLFLOW_BACKEND_STORE_URI, artifacts proxied."""
    assert definition.mlflow is not None
    return ["mlflow", "server", "--app-name", "basic-auth", "--host", host, "--port", str(definition.mlflow.port),
            "--backend-store-uri", "$(MLFLOW_BACKEND_STORE_URI)",
            "--artifacts-destination", definition.mlflow.artifacts_destination]


def mlflow_server(definition: ClusterDefinition) -> dict[str, Any]:
    """The MLflow server as a Deployment and its Service (plus the auth config): basic auth on, so registry writes
    need a signed-in user; secrets as references; non-root; inside the NetworkPolicy (it carries the name label)."""
    settings = definition.mlflow
    assert settings is not None
    name = urlparse(definition.tracking_uri).hostname.split(".")[0]  # type: ignore[union-attr]  # its Service
    labels = _labels(definition, **{"app.kubernetes.io/component": "mlflow"})
    env = [{"name": "MLFLOW_AUTH_CONFIG_PATH", "value": MLFLOW_AUTH_CONFIG},
           *_secret_env(definition, MLFLOW_SERVER_SECRET_ENV)]
    mounts = [{"name": "auth-config", "mountPath": str(Path(MLFLOW_AUTH_CONFIG).parent), "readOnly": True},
              {"name": "auth-db", "mountPath": MLFLOW_AUTH_DIR}]
    volumes: list[dict[str, Any]] = [{"name": "auth-config", "configMap": {"name": name}},
                                     {"name": "auth-db", "persistentVolumeClaim": {
                                         "claimName": settings.auth_volume_claim}}]
    container = {"name": "mlflow", "image": settings.image, "command": mlflow_server_command(definition),
                 "env": env, "ports": [{"containerPort": settings.port, "name": "http"}], "volumeMounts": mounts,
                 "readinessProbe": {"httpGet": {"path": "/health", "port": settings.port}, "periodSeconds": 10},
                 "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
                 "securityContext": dict(_CONTAINER_SECURITY)}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": name, "labels": labels},
                  "spec": {"replicas": settings.replicas, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels},
                                        "spec": {"securityContext": dict(_POD_SECURITY), "containers": [container],
                                                 "volumes": volumes,
                                                 "nodeSelector": definition.kubernetes.capacity_labels["on-demand"]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": settings.port,
                                                       "targetPort": settings.port}]}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
              "data": {Path(MLFLOW_AUTH_CONFIG).name: mlflow_auth_ini(definition)}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": settings.auth_volume_claim, "labels": labels},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    return {"apiVersion": "v1", "kind": "List",
            "items": [config, claim, deployment, service, mlflow_user_job(definition)]}


def mlflow_user_job(definition: ClusterDefinition) -> dict[str, Any]:
    """The Job that makes the user the Ray pods sign in as (mlflow_username / mlflow_password), signed in as the
    server's admin, once the server answers; rerun it after rotating the secret (`kubectl replace --force`)."""
    settings = definition.mlflow
    assert settings is not None
    admin = {"mlflow_admin_username": "MLFLOW_TRACKING_USERNAME", "mlflow_admin_password": "MLFLOW_TRACKING_PASSWORD",
             **MLFLOW_USER_ENV}
    container = {"name": "mlflow-user", "image": settings.image,
                 "command": ["python", "-m", "mlscale.registry.users"],
                 "env": [{"name": "MLFLOW_TRACKING_URI", "value": definition.tracking_uri},
                         *_secret_env(definition, admin)],
                 "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                               "limits": {"cpu": "500m", "memory": "512Mi"}},
                 "securityContext": {**_CONTAINER_SECURITY, "readOnlyRootFilesystem": True}}
    labels = _labels(definition, **{"app.kubernetes.io/component": "mlflow-user"})  # inside the NetworkPolicy
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _metadata(definition, f"{definition.name}-mlflow-user"),
            "spec": {"backoffLimit": 3, "activeDeadlineSeconds": 900, "ttlSecondsAfterFinished": 86400,
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"restartPolicy": "Never", "securityContext": dict(_POD_SECURITY),
                                           "containers": [container]}}}}


def network_policy(definition: ClusterDefinition) -> dict[str, Any]:
    """Default deny for the cluster's pods (RayCluster, RayService and monitor alike: they share the name label),
    then only: the pods among themselves (GCS, object transfer, workers), and the serve port from the ingress
    controller's namespace. The dashboard and Jobs API are reached from inside (the monitor's CronJob) or through
    `kubectl port-forward`, never from elsewhere in the cluster."""
    own = {"podSelector": {"matchLabels": _labels(definition)}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _metadata(definition, f"{definition.name}-ingress"),
            "spec": {**own, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [own]},
                                 {"from": [{"namespaceSelector": {"matchLabels": {
                                     "kubernetes.io/metadata.name": definition.kubernetes.ingress_namespace}}}],
                                  "ports": [{"protocol": "TCP", "port": SERVE_PORT}]}]}}


def render(definition: ClusterDefinition) -> dict[str, str]:
    """Every generated file, by its path under cluster/, as the text to write."""
    def dump(document: dict[str, Any]) -> str:
        return GENERATED + yaml.dump(document, Dumper=_PlainDumper, sort_keys=False, width=120)

    return {"ray-cluster.yaml": dump(launcher(definition)), "kuberay/raycluster.yaml": dump(raycluster(definition)),
            "kuberay/rayjob.yaml": dump(rayjob(definition)), "kuberay/rayservice.yaml": dump(rayservice(definition)),
            "kuberay/monitor-cronjob.yaml": dump(monitor_cronjob(definition)),
            "kuberay/networkpolicy.yaml": dump(network_policy(definition)),
            **({"kuberay/mlflow-server.yaml": dump(mlflow_server(definition))} if definition.mlflow else {})}


def write_rendered(definition_path: str | Path) -> list[Path]:
    """Render the definition into the files beside it; the paths written."""
    folder = Path(definition_path).parent
    written = []
    for name, text in render(load_definition(definition_path)).items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written
