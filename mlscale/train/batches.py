"""Where a training loop's batches come from: a worker's shard streamed through Ray Data, or held as tensors.

Streaming is what scales: a shard larger than a worker's memory is read again every epoch, with Ray Data's
iterator threads formatting, prefetching and locally shuffling beside the training thread. A shard that fits a few
hundred MB is read once instead and shuffled whole each epoch by a seeded permutation: no Ray Data execution per
epoch (seconds of fixed cost, paid by every trial of a search), no iterator threads competing with PyTorch's for
the worker's cores, and a full shuffle rather than a buffer's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

BATCH_DTYPES = {"x_num": torch.float32, "x_cat": torch.int64, "label": torch.float32}
HELD_DTYPES = {"x_num": np.float32, "x_cat": np.int64, "label": np.float32}
LOAD_BATCH_ROWS = 65_536


def row_bytes(network_spec: dict[str, Any]) -> int:
    """Bytes one featurized row takes as tensors: float32 numerics, int64 category codes, a float32 label."""
    return 4 * network_spec["n_numeric"] + 8 * len(network_spec["cardinalities"]) + 4


def fits_in_memory(rows: int, network_spec: dict[str, Any], budget_mb: int) -> bool:
    """The one rule for holding featurized rows as tensors instead of streaming them: `rows` (what one process
    would hold) within a `train.cache_*_mb` budget. A training run and a sweep's in-process trials both ask it."""
    return rows * row_bytes(network_spec) <= budget_mb * 2**20


class HeldSplit:
    """A featurized split read once into numpy arrays; it offers `iter_torch_batches` as a Ray Data shard does,
    so the loop reads either the same way. Shipped to Ray Tune trials through the object store, the arrays are
    read without a copy by every trial process: one read per sweep instead of one Ray Data execution per trial."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    @classmethod
    def read(cls, dataset: Any) -> HeldSplit:
        parts = list(dataset.iter_batches(batch_size=LOAD_BATCH_ROWS, batch_format="numpy"))
        return cls({name: np.concatenate([np.asarray(part[name], dtype) for part in parts]) if parts
                    else np.zeros(0, dtype) for name, dtype in HELD_DTYPES.items()})

    def count(self) -> int:
        return len(self.arrays["label"])

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The whole split as tensors in one copy (object-store arrays are read-only, so torch must copy)."""
        return {name: torch.tensor(array, dtype=BATCH_DTYPES[name], device=device)
                for name, array in self.arrays.items()}

    def iter_torch_batches(self, batch_size: int, dtypes: dict[str, torch.dtype],
                           device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
        for first in range(0, self.count(), batch_size):  # torch.tensor copies: object-store arrays are read-only
            yield {name: torch.tensor(array[first:first + batch_size], dtype=dtypes[name], device=device)
                   for name, array in self.arrays.items()}


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


class StreamedShard:
    """The shard read through Ray Data each epoch, shuffled within a buffer of 8 batches."""

    def __init__(self, shard: Any, batch_size: int, device: torch.device, seed: int) -> None:
        self.shard, self.batch_size, self.device, self.seed = shard, batch_size, device, seed

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.shard.iter_torch_batches(
            batch_size=self.batch_size, dtypes=BATCH_DTYPES, device=self.device,
            local_shuffle_buffer_size=self.batch_size * 8, local_shuffle_seed=self.seed + epoch,
        ))


class InMemoryShard:
    """The shard read once into tensors on the worker's device; each epoch a permutation seeded by (seed, rank,
    epoch), so a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, shard: Any, batch_size: int, device: torch.device, seed: int, rank: int) -> None:
        self.batch_size, self.device, self.seed, self.rank = batch_size, device, seed, rank
        if isinstance(shard, HeldSplit):
            self.tensors = shard.tensors(device)
            return
        parts = list(shard.iter_torch_batches(batch_size=LOAD_BATCH_ROWS, dtypes=BATCH_DTYPES, device=device))
        self.tensors = {name: torch.cat([part[name] for part in parts]) if parts
                        else torch.empty(0, dtype=dtype, device=device) for name, dtype in BATCH_DTYPES.items()}

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.rank, epoch))
        order = torch.randperm(len(self), generator=generator).to(self.device)
        for first in range(0, len(self), self.batch_size):
            index = order[first:first + self.batch_size]
            yield {name: tensor[index] for name, tensor in self.tensors.items()}


class ValidationBatches:
    """This worker's validation shard, kept in memory after the first pass when it fits under a byte budget.

    Each pass over a Ray Data shard starts a streaming execution (seconds of fixed cost); evaluating every N steps
    would pay that each time. A validation split is usually small; a large one is streamed every time instead.
    """

    def __init__(self, shard: Any, batch_size: int, device: torch.device, max_bytes: int) -> None:
        self.shard, self.batch_size, self.device, self.max_bytes = shard, batch_size, device, max_bytes
        self.cached: list[dict[str, torch.Tensor]] | None = None
        self.too_large = False

    def __iter__(self) -> Any:
        if self.cached is not None:
            yield from self.cached
            return
        kept: list[dict[str, torch.Tensor]] = []
        size = 0
        for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, dtypes=BATCH_DTYPES,
                                                   device=self.device):
            if not self.too_large:
                size += sum(t.element_size() * t.nelement() for t in batch.values())
                self.too_large = size > self.max_bytes
                kept.append(batch)
            yield batch
        if not self.too_large:
            self.cached = kept
