"""The network and how it is trained: the train section (model, optimizer, schedule, checkpoints)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlscale.config.base import StrictModel

Norm = Literal["none", "layer", "batch"]
Family = Literal["mlp", "resmlp", "ft_transformer"]


class ModelConfig(StrictModel):
    """The network: a family and its own parameters (what architecture search varies)."""

    family: Family = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64, 32], description="mlp: the hidden layer widths.")
    norm: Norm = Field("none", description="mlp: normalization after each layer.")
    width: int = Field(64, ge=1, description="resmlp: the residual stream's width.")
    blocks: int = Field(2, ge=1, description="resmlp: residual blocks.")
    d_token: int = Field(16, ge=2, description="ft_transformer: token width (divisible by heads).")
    heads: int = Field(2, ge=1)
    layers: int = Field(2, ge=1, description="ft_transformer: attention layers.")
    dropout: float = Field(0.1, ge=0, lt=1)
    embedding_cap: int = Field(16, ge=2, description="Largest embedding width of a categorical column.")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        for width in value:
            if width < 1:
                raise ValueError(f"every hidden width must be >= 1, got {width}")
        return value

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.family == "ft_transformer" and self.d_token % self.heads:
            raise ValueError(f"d_token ({self.d_token}) must be divisible by heads ({self.heads})")
        return self


class OptimizerConfig(StrictModel):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only.")


class ScheduleConfig(StrictModel):
    """The learning rate over the run: linear warmup, then constant, cosine decay, or steps."""

    name: Literal["constant", "cosine", "step"] = "cosine"
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of all steps spent warming up linearly.")
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="cosine: the final lr as a share of the peak.")
    step_every_epochs: int = Field(1, ge=1, description="step: decay every this many epochs ...")
    gamma: float = Field(0.5, gt=0, le=1, description="step: ... by this factor.")


class EarlyStoppingConfig(StrictModel):
    """Stop when the validation metric has not improved by min_delta for `patience` evaluations in a row."""

    enabled: bool = True
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0)


class CheckpointSettings(StrictModel):
    every_n_steps: int | None = Field(
        None, ge=1, description="Evaluate and checkpoint every this many steps; None: at the end of every epoch."
    )
    keep: int = Field(2, ge=1, description="Checkpoints kept: the best by the validation metric.")


class TrainConfig(StrictModel):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, description="With use_gpu: GPUs reserved per worker (NCCL).")
    bf16: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU).")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(512, ge=1, description="Rows per step on each worker.")
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; None: no clipping.")
    metric: str | None = Field(
        None, description="Validation metric for best checkpoints and early stopping; None: val_auc, or val_rmse."
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    max_failures: int = Field(1, ge=-1, description="Worker failures to recover from (-1: unlimited).")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Where the workers go: PACK fills a node first (fast collectives); SPREAD puts them on "
                            "different nodes when it can, so one lost node costs one worker, and the restart packs "
                            "onto what is left (STRICT_SPREAD would wait for a replacement node instead).")
    materialize_mb: int = Field(
        2048, ge=0, description="Featurized training parquet up to this size is read once into the object store "
                                "instead of once per epoch (and the validation split too when both fit); larger "
                                "splits stream every epoch."
    )
    cache_train_mb: int = Field(
        1024, ge=0, description="Each worker holds its train shard as tensors when they take less than this, and "
                                "shuffles it whole each epoch; a larger shard streams through Ray Data every epoch."
    )
    cache_val_mb: int = Field(
        512, ge=0, description="Each worker keeps its validation shard in memory when it is smaller than this."
    )
    storage_uri: str | None = Field(
        None, description="Checkpoints: a path or s3://bucket/prefix (data.object_store settings); "
                          "None: <storage.root>/train."
    )
    run_name: str | None = Field(
        None, description="Ray Train run name; a rerun with the same name resumes from its checkpoints. None: named "
                          "from the config and data, so an interrupted job resumes when resubmitted."
    )
