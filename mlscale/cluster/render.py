"""Every generated file of cluster/, rendered from the definition and written beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlscale.cluster.definition import GENERATED, ClusterDefinition, PlainDumper, load_definition
from mlscale.cluster.kuberay import monitor_cronjob, network_policy, raycluster, rayjob, rayservice
from mlscale.cluster.launcher import launcher
from mlscale.cluster.mlflow_server import mlflow_server


def render(definition: ClusterDefinition) -> dict[str, str]:
    """Every generated file, by its path under cluster/, as the text to write."""
    def dump(document: dict[str, Any]) -> str:
        return GENERATED + yaml.dump(document, Dumper=PlainDumper, sort_keys=False, width=120)

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
