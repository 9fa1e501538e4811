"""Networks built from a plain-data spec, so a bundle can rebuild its network without pickled code.

The spec is also what architecture search varies: family, widths, dropout, embedding sizes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def embedding_dim(cardinality: int, cap: int = 16) -> int:
    """A common rule of thumb: grows slowly with cardinality, capped."""
    return max(2, min(cap, round(1.6 * cardinality**0.56)))


def mlp_spec(n_numeric: int, cardinalities: list[int], hidden: list[int], dropout: float) -> dict[str, Any]:
    return {
        "family": "mlp",
        "n_numeric": n_numeric,
        "cardinalities": list(cardinalities),
        "embedding_dims": [embedding_dim(c) for c in cardinalities],
        "hidden": list(hidden),
        "dropout": dropout,
    }


class TabularMLP(nn.Module):
    """Categorical embeddings concatenated with numeric features, then an MLP to one logit."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(c, d) for c, d in zip(spec["cardinalities"], spec["embedding_dims"], strict=True)
        )
        width = spec["n_numeric"] + sum(spec["embedding_dims"])
        layers: list[nn.Module] = []
        for hidden in spec["hidden"]:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(spec["dropout"])]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = [x_num] + [embed(x_cat[:, i]) for i, embed in enumerate(self.embeddings)]
        return self.body(torch.cat(parts, dim=1)).squeeze(-1)


FAMILIES: dict[str, type[nn.Module]] = {"mlp": TabularMLP}


def build_network(spec: dict[str, Any]) -> nn.Module:
    family = spec.get("family")
    if family not in FAMILIES:
        raise ValueError(f"network spec family {family!r} is unknown; known: {sorted(FAMILIES)}")
    return FAMILIES[family](spec)

