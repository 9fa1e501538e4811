"""The KubeRay manifests made from the definition: RayCluster, RayJob, RayService, the monitor's CronJob and the
NetworkPolicy."""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from mlscale.cluster.definition import DASHBOARD_PORT, SECRET_ENV, SERVE_PORT, ClusterDefinition, NodeGroup


def secret_env(definition: ClusterDefinition, names: dict[str, str]) -> list[dict[str, Any]]:
    """Environment variables from the definition's secrets (a reference to each, never its value)."""
    return [{"name": variable, "valueFrom": {"secretKeyRef": {"name": definition.secrets[key].secret,
                                                              "key": definition.secrets[key].key}}}
            for key, variable in names.items() if key in definition.secrets]


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100,
                 "seccompProfile": {"type": "RuntimeDefault"}}


def raycluster_spec(definition: ClusterDefinition) -> dict[str, Any]:
    """The RayCluster spec (also the RayService's rayClusterConfig): token auth, a head that schedules only, one
    worker group per definition group on its capacity type, non-root pods."""
    env = [*({"name": name, "value": value} for name, value in definition.shared_env.items()),
           *secret_env(definition, SECRET_ENV)]
    mounts = [{"name": "shared", "mountPath": definition.storage_uri}] if definition.storage_uri.startswith("/") \
        else []
    volumes = [{"name": "shared", "persistentVolumeClaim": {"claimName": definition.kubernetes.shared_volume_claim}}] \
        if mounts else []

    def pod(name: str, image: str, group: NodeGroup, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        resources = {"cpu": str(group.cpu), "memory": f"{group.memory_gib}Gi",
                     **({"nvidia.com/gpu": str(group.gpu)} if group.gpu else {})}
        container: dict[str, Any] = {"name": name, "image": image,
                                     "resources": {"limits": resources, "requests": dict(resources)}, "env": env,
                                     "securityContext": dict(CONTAINER_SECURITY)}
        if ports:
            container["ports"] = ports
        if mounts:
            container["volumeMounts"] = mounts
        spec: dict[str, Any] = {"securityContext": dict(POD_SECURITY),
                                "containers": [container],
                                "nodeSelector": definition.kubernetes.capacity_labels[group.capacity]}
        if volumes:
            spec["volumes"] = volumes
        if group.gpu:
            spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        return {"metadata": {"labels": pod_labels(definition)}, "spec": spec}

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


def pod_labels(definition: ClusterDefinition, **extra: str) -> dict[str, str]:
    """The name label every object of the cluster carries: the NetworkPolicy selects its pods by it."""
    return {"app.kubernetes.io/name": definition.name, **extra}


def metadata(definition: ClusterDefinition, name: str) -> dict[str, Any]:
    return {"name": name, "labels": pod_labels(definition)}


def raycluster(definition: ClusterDefinition) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": metadata(definition, definition.name),
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
            "metadata": metadata(definition, f"{definition.name}-{stage}"),
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
                          "import_path": "mlscale.serve.build:app_builder",
                          "args": {"model_uri": model_uri, "tracking_uri": definition.tracking_uri, **app_args}}]}
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": metadata(definition, definition.name),
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
        "securityContext": {**CONTAINER_SECURITY, "readOnlyRootFilesystem": True}}  # it writes nothing
    pod = {"metadata": {"labels": pod_labels(definition, **{"app.kubernetes.io/component": "monitor"})},
           "spec": {"restartPolicy": "Never", "securityContext": dict(POD_SECURITY), "containers": [container]}}
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": metadata(definition, f"{definition.name}-monitor"),
            "spec": {"schedule": schedule, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 600,
                     "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 5,
                     "jobTemplate": {"spec": {"backoffLimit": 0, "activeDeadlineSeconds": 7200, "template": pod}}}}



def network_policy(definition: ClusterDefinition) -> dict[str, Any]:
    """Default deny for the cluster's pods (RayCluster, RayService and monitor alike: they share the name label),
    then only: the pods among themselves (GCS, object transfer, workers), and the serve port from the ingress
    controller's namespace. The dashboard and Jobs API are reached from inside (the monitor's CronJob) or through
    `kubectl port-forward`, never from elsewhere in the cluster."""
    own = {"podSelector": {"matchLabels": pod_labels(definition)}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(definition, f"{definition.name}-ingress"),
            "spec": {**own, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [own]},
                                 {"from": [{"namespaceSelector": {"matchLabels": {
                                     "kubernetes.io/metadata.name": definition.kubernetes.ingress_namespace}}}],
                                  "ports": [{"protocol": "TCP", "port": SERVE_PORT}]}]}}
