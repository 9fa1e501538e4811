"""The model bundle: the one artifact that crosses from training to serving.

A folder with bundle.json (network spec, fitted features, input schema, profile, metrics, lineage, all plain
JSON) and weights.pt (a state dict, loaded with weights_only=True so loading never runs pickled code). Batch
scoring, online serving and evaluation all predict through Bundle.predict_columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlscale.features.featureset import ColumnLike, FittedFeatures
from mlscale.models.networks import build_network
from mlscale.schema import ColumnSpec

BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1
VARIANTS = ("fp32", "int8")


@dataclass
class Bundle:
    network_spec: dict[str, Any]
    features: FittedFeatures
    input_schema: list[ColumnSpec]
    state_dict: dict[str, torch.Tensor]
    label: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)
    # the dataset's other declared columns (its label, columns no feature uses): a request carrying whole rows may
    # send them and they are ignored; any other field the input schema does not know is a 422
    passthrough_columns: list[str] = field(default_factory=list)
    variant: str = "fp32"  # how the network runs (not saved: the weights are always the trained fp32 ones)

    @cached_property
    def model(self) -> torch.nn.Module:
        network = build_network(self.network_spec)
        network.load_state_dict(self.state_dict)
        network.eval()
        return quantized(network) if self.variant == "int8" else network

    def with_variant(self, variant: str) -> Bundle:
        """The same bundle run as another variant (fp32, or int8 for CPU serving); the weights are shared."""
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is unknown; known: {', '.join(VARIANTS)}")
        return self if variant == self.variant else replace(self, variant=variant)

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
            "passthrough_columns": self.passthrough_columns,
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
            passthrough_columns=document.get("passthrough_columns", []),  # bundles saved before it: none
        )

    @property
    def profile(self) -> dict[str, Any]:
        return self.features.profile()


class Int8Linear(torch.nn.Module):
    """A Linear layer run in int8: weights quantized once per output channel, activations quantized per row as
    they arrive (dynamic quantization), an int8 x int8 -> int32 matrix product, then rescaled to float.

    Per-row activation scales (not torch.ao's one scale per batch tensor) make a row's prediction independent of
    the other rows it is batched with, so a served record gets exactly the answer batch scoring gives it.
    """

    weight_t: torch.Tensor  # buffers, named for type checkers
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_t", quantized.t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", linear.bias.detach().float() if linear.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
        quantized = (rows / scale).round_().to(torch.int8)  # |rows / scale| <= 127 by construction
        out = torch._int_mm(quantized, self.weight_t).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def quantized(network: torch.nn.Module) -> torch.nn.Module:
    """The network with every Linear layer replaced by its int8 version (embeddings and norms stay fp32)."""
    for name, child in list(network.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(network, name, Int8Linear(child))
        else:
            quantized(child)
    return network


def find_bundle_dir(directory: Path) -> Path:
    """The bundle inside a folder: itself, or where an MLflow model keeps it (artifacts/bundle)."""
    for candidate in (directory, directory / "artifacts" / "bundle", directory / "bundle"):
        if (candidate / BUNDLE_FILE).exists():
            return candidate
    raise FileNotFoundError(f"no {BUNDLE_FILE} in {directory} (nor in its artifacts/bundle)")
