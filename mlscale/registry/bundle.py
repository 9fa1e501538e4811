"""The model bundle: the one artifact that crosses from training to serving.

A folder with bundle.json (network spec, fitted features, input schema, profile, metrics, lineage, all plain
JSON) and weights.pt (a state dict, loaded with weights_only=True so loading never runs pickled code). Batch
scoring, online serving and evaluation all predict through Bundle.predict_columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlscale.data.schema import ColumnSpec
from mlscale.features.featureset import ColumnLike, FittedFeatures
from mlscale.models.networks import build_network

BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1


@dataclass
class Bundle:
    network_spec: dict[str, Any]
    features: FittedFeatures
    input_schema: list[ColumnSpec]
    state_dict: dict[str, torch.Tensor]
    label: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)

    @cached_property
    def model(self) -> torch.nn.Module:
        network = build_network(self.network_spec)
        network.load_state_dict(self.state_dict)
        network.eval()
        return network

    @property
    def input_columns(self) -> list[str]:
        return [spec.name for spec in self.input_schema]

    @property
    def task(self) -> str:
        return self.label.get("task", "classification")

    def predict_columns(self, columns: Mapping[str, ColumnLike]) -> np.ndarray:
        """Raw input columns -> probability of the positive class, or the predicted value (float64)."""
        tensors = self.features.transform(columns)
        with torch.inference_mode():
            output = self.model(torch.from_numpy(tensors["x_num"]), torch.from_numpy(tensors["x_cat"]))
        if self.task == "regression":
            return output.double().numpy() * self.label["std"] + self.label["mean"]
        return torch.sigmoid(output).double().numpy()

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """JSON-like records (missing keys and None are missing values) -> probabilities."""
        columns = {name: [record.get(name) for record in records] for name in self.input_columns}
        return self.predict_columns(columns)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict, directory / WEIGHTS_FILE)
        document = {
            "format_version": FORMAT_VERSION,
            "network_spec": self.network_spec,
            "features": self.features.state,
            "input_schema": [spec.model_dump() for spec in self.input_schema],
            "label": self.label,
            "metrics": self.metrics,
            "lineage": self.lineage,
        }
        (directory / BUNDLE_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Bundle:
        directory = find_bundle_dir(Path(directory))
        document = json.loads((directory / BUNDLE_FILE).read_text())
        if document.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"bundle format {document.get('format_version')} is not supported ({directory})")
        state_dict = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        return cls(
            network_spec=document["network_spec"],
            features=FittedFeatures(document["features"]),
            input_schema=[ColumnSpec(**spec) for spec in document["input_schema"]],
            state_dict=state_dict,
            label=document["label"],
            metrics=document["metrics"],
            lineage=document["lineage"],
        )

    @property
    def profile(self) -> dict[str, Any]:
        return self.features.profile()


def find_bundle_dir(directory: Path) -> Path:
    """The bundle inside a folder: itself, or where an MLflow model keeps it (artifacts/bundle)."""
    for candidate in (directory, directory / "artifacts" / "bundle", directory / "bundle"):
        if (candidate / BUNDLE_FILE).exists():
            return candidate
    raise FileNotFoundError(f"no {BUNDLE_FILE} in {directory} (nor in its artifacts/bundle)")
