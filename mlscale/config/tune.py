"""The search: its space (hyperparameters and architectures), scheduler and budget (the tune section)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlscale.config.base import StrictModel
from mlscale.config.train import Family, Norm


class Distribution(StrictModel):
    """One searched value: `choices` (categorical), or low/high (int when both are integers; `log` for scales)."""

    choices: list[Any] | None = Field(None, min_length=1)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices, or both low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got {self.low:g}")
        return self

    @property
    def is_int(self) -> bool:
        if self.choices is not None or self.low is None or self.high is None:
            return False
        return float(self.low).is_integer() and float(self.high).is_integer() and (
            self.step is None or float(self.step).is_integer())


def _int_range(value: Any) -> Any:
    """[lo, hi] is shorthand for {low: lo, high: hi}."""
    return {"low": value[0], "high": value[1]} if isinstance(value, list | tuple) and len(value) == 2 else value




def _all_norms() -> list[Norm]:
    return ["none", "layer", "batch"]


def _default_families() -> list[Family]:
    return ["mlp", "resmlp"]


class MlpSpace(StrictModel):
    layers: Distribution = Field(default_factory=lambda: Distribution(low=1, high=3))
    width: Distribution = Field(default_factory=lambda: Distribution(low=16, high=256, log=True),
                                description="Each layer's width, searched per layer that exists.")
    norm: list[Norm] = Field(default_factory=_all_norms)

    _ranges = field_validator("layers", "width", mode="before")(lambda value: _int_range(value))


class ResMlpSpace(StrictModel):
    blocks: Distribution = Field(default_factory=lambda: Distribution(low=1, high=4))
    width: Distribution = Field(default_factory=lambda: Distribution(low=32, high=256, log=True))

    _ranges = field_validator("blocks", "width", mode="before")(lambda value: _int_range(value))


class FtTransformerSpace(StrictModel):
    layers: Distribution = Field(default_factory=lambda: Distribution(low=1, high=3))
    d_token: list[int] = Field(default_factory=lambda: [8, 16, 32], min_length=1)
    heads: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1,
                             description="Only the head counts that divide the trial's d_token are offered.")

    _ranges = field_validator("layers", mode="before")(lambda value: _int_range(value))

    @model_validator(mode="after")
    def _some_heads_divide(self) -> FtTransformerSpace:
        for d_token in self.d_token:
            if not any(d_token % heads == 0 for heads in self.heads):
                raise ValueError(f"no value of heads {self.heads} divides d_token {d_token}")
        return self


class ArchitectureSpace(StrictModel):
    """Neural architecture search: the family, then only that family's own choices (conditional parameters)."""

    families: list[Family] = Field(default_factory=_default_families, min_length=1)
    mlp: MlpSpace = Field(default_factory=MlpSpace)
    resmlp: ResMlpSpace = Field(default_factory=ResMlpSpace)
    ft_transformer: FtTransformerSpace = Field(default_factory=FtTransformerSpace)


def _default_params() -> dict[str, Distribution]:
    return {
        "train.optimizer.lr": Distribution(low=3e-4, high=3e-2, log=True),
        "train.batch_size": Distribution(choices=[128, 256, 512]),
        "train.optimizer.weight_decay": Distribution(low=1e-6, high=1e-2, log=True),
        "train.model.dropout": Distribution(low=0.0, high=0.3),
    }


class SearchSpace(StrictModel):
    params: dict[str, Distribution] = Field(
        default_factory=_default_params, description="Dotted config field -> distribution (hyperparameters).")
    architecture: ArchitectureSpace | None = Field(
        default_factory=ArchitectureSpace, description="None: keep train.model as configured.")


class SchedulerSettings(StrictModel):
    name: Literal["asha", "none"] = Field("asha", description="asha: stop trials behind their peers early.")
    grace_period: float = Field(1.0, gt=0, description="Epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(3.0, gt=1, description="Only 1/reduction_factor of trials go on at each rung.")


class TuneSettings(StrictModel):
    num_trials: int = Field(12, ge=1, description="Trial budget.")
    time_budget_s: float | None = Field(None, gt=0, description="Time budget: no new trials after this, "
                                                                "running ones are stopped.")
    epoch_budget: float | None = Field(
        None, gt=0, description="Trial-epoch budget: no new trials once the trials together have trained this many "
                                "epochs (a pruned trial costs only the epochs it ran).")
    sampler: Literal["tpe", "random"] = "tpe"
    startup_trials: int = Field(5, ge=1, description="tpe: random trials before the model of good and bad regions "
                                                     "takes over.")
    seed: int = 0
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    space: SearchSpace = Field(default_factory=SearchSpace)
    trial_workers: int = Field(
        1, ge=0, description="Ray Train workers per trial; 0 trains inside the trial's own process (small models, "
                             "where starting a worker group costs more than the training).")
    driver_cpus: float = Field(0.1, gt=0, description="CPU reserved for each trial's driver, which only waits on its "
                                                       "Ray Train run (with trial_workers: 0 it trains: 1 CPU).")
    data_cpus: float = Field(1.0, ge=0, description="CPUs kept free for Ray Data tasks, so trials never starve "
                                                     "their own data reads.")
    max_concurrent_trials: int | None = Field(None, ge=1, description="None: as many as the cluster fits.")
    cost: Literal["params", "latency_ms"] | None = Field(
        None, description="Multi-objective: also minimize this model cost; the result includes the Pareto front.")
    max_cost: float | None = Field(None, gt=0, description="With cost: the registered winner must cost at most this.")
    name: str | None = Field(None, description="Sweep name; a rerun with the same name resumes it. None: named from "
                                               "the config and data, so an interrupted job resumes when resubmitted.")
    storage_uri: str | None = Field(None, description="Tune's experiment storage: a path or s3://; "
                                                      "None: <storage.root>/tune.")
    study_storage: str | None = Field(
        None, description="SQLAlchemy URL of the Optuna study database; None: sqlite beside the experiment.")
