"""The MLflow tracking server a cluster runs (basic auth, its own volume) and the job that creates its user."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlscale.cluster.definition import MLFLOW_AUTH_CONFIG, MLFLOW_SERVER_SECRET_ENV, MLFLOW_USER_ENV, ClusterDefinition
from mlscale.cluster.kuberay import CONTAINER_SECURITY, POD_SECURITY, metadata, pod_labels, secret_env

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
    labels = pod_labels(definition, **{"app.kubernetes.io/component": "mlflow"})
    env = [{"name": "MLFLOW_AUTH_CONFIG_PATH", "value": MLFLOW_AUTH_CONFIG},
           *secret_env(definition, MLFLOW_SERVER_SECRET_ENV)]
    mounts = [{"name": "auth-config", "mountPath": str(Path(MLFLOW_AUTH_CONFIG).parent), "readOnly": True},
              {"name": "auth-db", "mountPath": MLFLOW_AUTH_DIR}]
    volumes: list[dict[str, Any]] = [{"name": "auth-config", "configMap": {"name": name}},
                                     {"name": "auth-db", "persistentVolumeClaim": {
                                         "claimName": settings.auth_volume_claim}}]
    container = {"name": "mlflow", "image": settings.image, "command": mlflow_server_command(definition),
                 "env": env, "ports": [{"containerPort": settings.port, "name": "http"}], "volumeMounts": mounts,
                 "readinessProbe": {"httpGet": {"path": "/health", "port": settings.port}, "periodSeconds": 10},
                 "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
                 "securityContext": dict(CONTAINER_SECURITY)}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": name, "labels": labels},
                  "spec": {"replicas": settings.replicas, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels},
                                        "spec": {"securityContext": dict(POD_SECURITY), "containers": [container],
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
                         *secret_env(definition, admin)],
                 "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                               "limits": {"cpu": "500m", "memory": "512Mi"}},
                 "securityContext": {**CONTAINER_SECURITY, "readOnlyRootFilesystem": True}}
    labels = pod_labels(definition, **{"app.kubernetes.io/component": "mlflow-user"})  # inside the NetworkPolicy
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": metadata(definition, f"{definition.name}-mlflow-user"),
            "spec": {"backoffLimit": 3, "activeDeadlineSeconds": 900, "ttlSecondsAfterFinished": 86400,
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"restartPolicy": "Never", "securityContext": dict(POD_SECURITY),
                                           "containers": [container]}}}}
