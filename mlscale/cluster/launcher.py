"""The Ray cluster launcher YAML (`ray up`) made from the definition."""

from __future__ import annotations

from typing import Any

from mlscale.cluster.definition import ClusterDefinition, NodeGroup


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
