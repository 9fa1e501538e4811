"""Where the pipeline runs, keeps its files and tracks its runs: the ray, storage and tracking sections."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mlscale.config.base import StrictModel

PromotionPolicy = Literal["always", "if_better", "manual", "canary"]
"""How a trained model reaches the alias; `promotion.decide` acts on it."""


class RayConfig(StrictModel):
    address: str | None = Field(None, description="Cluster address; None starts an embedded local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of the embedded Ray (None: Ray decides).")
    object_store_memory: int | None = Field(None, ge=78_643_200)
    include_dashboard: bool = Field(True, description="Ray Train's placement-group cleanup needs the state API.")
    parquet_reader: Literal["v1", "v2"] = Field(
        "v1", description="Ray Data's parquet reader. v1 plans a read on the driver; v2 (Ray's default) footer-reads "
                          "every file on a pool of actors it starts and kills for each read: ~1.4 s more per read "
                          "on a 2-core node (benchmarks/README.md), for row-group pushdown that pays on many large "
                          "files on object storage.")
    read_unit_bytes: int = Field(
        8 * 2**20, ge=2**20, description="v2 reader: parquet bytes one Ray Data read task takes (bounds each reader's "
                                         "memory; v1 streams each file in batches)."
    )
    target_max_block_size: int = Field(16 * 2**20, ge=2**20, description="Ray Data's cap on one block's size.")
    data_poll_s: float = Field(
        0.02, gt=0, le=1, description="How often Ray Data's executor looks for finished tasks (Ray's own: 0.1 s)."
    )
    data_limits_refresh_s: float = Field(
        0.1, gt=0, le=10, description="How often Ray Data's executor re-reads the cluster's resources (Ray's own: 1 s)."
    )


class StorageConfig(StrictModel):
    root: str = Field(".mlscale", description="Where prepared data, checkpoints and caches live.")
    prepared_uri: str | None = Field(
        None, description="The prepared splits and their manifest: a path, or s3://bucket/prefix (data.object_store "
                          "settings) that every node of a cluster reads; None: <root>/prepared.")
    prepared_retention_s: float = Field(
        7 * 86400.0, ge=0, description="How long a replaced preparation is kept: each one is a folder of its own "
                                       "(<name>/<version>), so jobs still reading an older version keep reading it; "
                                       "versions older than this, other than the committed one, are deleted.")

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve()


class TrackingConfig(StrictModel):
    uri: str | None = Field(None, description="MLflow tracking URI; None means a sqlite store under storage.root.")
    experiment: str = "mlscale"
    registered_model: str = "flights-late-arrival"
    alias: str = Field("champion", description="The alias serving loads.")
    promotion: PromotionPolicy = Field(
        "if_better", description="After training, the new version is the challenger; if_better moves the champion "
                                 "alias to it when it beats the champion on the test split; canary judges it the "
                                 "same way but leaves the alias to a canary release (the retraining loop)."
    )
    promotion_min_delta: float = Field(0.0, ge=0, description="if_better: how much better it must be.")
    secrets: list[str] = Field(
        default_factory=list, description="Dotted config fields whose values are never logged (shown as ***); "
                                          "passwords in URLs and fields named like password/token are always hidden.")
