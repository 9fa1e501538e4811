"""The search space as an Optuna define-by-run function, and a sampled point turned back into a pipeline config.

Hyperparameters are named by the config field they set (`train.optimizer.lr`); architecture choices live under
`arch.`: the family first, then only that family's parameters, so a 2-layer MLP never samples a third width and
an FT-Transformer only sees head counts that divide its token width.
"""

from __future__ import annotations

from typing import Any

import optuna

from mlscale.config import ArchitectureSpace, Distribution, PipelineConfig, SearchSpace, config_from_dict

ARCH = "arch"


def suggest_value(trial: optuna.Trial, name: str, distribution: Distribution) -> Any:
    if distribution.choices is not None:
        return trial.suggest_categorical(name, distribution.choices)
    low, high = distribution.low, distribution.high
    assert low is not None and high is not None  # the config allows choices or low/high, nothing else
    if distribution.is_int:
        step = int(distribution.step or 1)
        return trial.suggest_int(name, int(low), int(high), step=step, log=distribution.log)
    return trial.suggest_float(name, low, high, step=distribution.step, log=distribution.log)


def suggest_architecture(trial: optuna.Trial, space: ArchitectureSpace) -> None:
    family = trial.suggest_categorical(f"{ARCH}.family", space.families)
    prefix = f"{ARCH}.{family}"
    if family == "mlp":
        layers = suggest_value(trial, f"{prefix}.layers", space.mlp.layers)
        for index in range(int(layers)):  # a width for each layer that exists, and no other
            suggest_value(trial, f"{prefix}.width_{index}", space.mlp.width)
        trial.suggest_categorical(f"{prefix}.norm", space.mlp.norm)
    elif family == "resmlp":
        suggest_value(trial, f"{prefix}.blocks", space.resmlp.blocks)
        suggest_value(trial, f"{prefix}.width", space.resmlp.width)
    else:
        settings = space.ft_transformer
        suggest_value(trial, f"{prefix}.layers", settings.layers)
        d_token = trial.suggest_categorical(f"{prefix}.d_token", settings.d_token)
        # Optuna wants one fixed set of choices per name, so the heads parameter is named by the token width.
        trial.suggest_categorical(f"{prefix}.heads_d{d_token}", [h for h in settings.heads if d_token % h == 0])


class DefineByRun:
    """The define-by-run function OptunaSearch calls; a class, so Tune can pickle it into the sweep's state."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> None:
        for name, distribution in self.space.params.items():
            suggest_value(trial, name, distribution)
        if self.space.architecture is not None:
            suggest_architecture(trial, self.space.architecture)


def overrides_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """A sampled point as dotted config overrides: `arch.*` becomes the train.model fields it describes."""
    overrides = {name: value for name, value in params.items() if not name.startswith(f"{ARCH}.")}
    family = params.get(f"{ARCH}.family")
    if family is None:
        return overrides
    prefix = f"{ARCH}.{family}."
    own = {name.removeprefix(prefix): value for name, value in params.items() if name.startswith(prefix)}
    model: dict[str, Any] = {"family": family}
    if family == "mlp":
        model["hidden"] = [int(own[f"width_{i}"]) for i in range(int(own["layers"]))]
        model["norm"] = own["norm"]
    elif family == "resmlp":
        model.update(blocks=int(own["blocks"]), width=int(own["width"]))
    else:
        d_token = int(own["d_token"])
        model.update(layers=int(own["layers"]), d_token=d_token, heads=int(own[f"heads_d{d_token}"]))
    overrides.update({f"train.model.{key}": value for key, value in model.items()})
    return overrides


def apply_params(config: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """The pipeline config one trial trains with (validated like any config: a bad space fails by field name)."""
    data = config.model_dump(mode="python", by_alias=True)
    for dotted, value in overrides_from_params(params).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config_from_dict(data, f"trial params {params}")


def architecture_of(config: PipelineConfig) -> dict[str, Any]:
    """The chosen network, as recorded with the registered winner: the family and its own parameters."""
    from mlscale.models.networks import FAMILY_KEYS

    model = config.train.model
    return {"family": model.family, **{key: getattr(model, key) for key in FAMILY_KEYS[model.family]},
            "embedding_cap": model.embedding_cap}
