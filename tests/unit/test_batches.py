"""The train shard held in memory: every row once per epoch, the same order for the same (seed, rank, epoch), and
the size rule the trainer uses to decide between holding and streaming."""

import numpy as np
import pyarrow.fs as pafs
import torch

from mlscale.config import PipelineConfig
from mlscale.models.networks import network_spec
from mlscale.train.batches import BATCH_DTYPES, HeldSplit, InMemoryShard, row_bytes
from mlscale.train.trainer import loop_config

ROWS = 1_000


def held_rows(count: int) -> HeldSplit:
    """A split held in memory: x_num's first column is 3 x the row's number, so a batch says which rows it has."""
    x_num = np.arange(count * 3, dtype=np.float32).reshape(count, 3)
    return HeldSplit({"x_num": x_num, "x_cat": np.arange(count * 2).reshape(count, 2) % 7,
                      "label": (np.arange(count) % 2).astype(np.float32)})


def shard(rank: int = 0, seed: int = 7) -> InMemoryShard:
    return InMemoryShard(held_rows(ROWS), batch_size=64, device=torch.device("cpu"), seed=seed, rank=rank)


def order(held: InMemoryShard, epoch: int) -> list[float]:
    return [value for batch in held.epoch(epoch) for value in batch["x_num"][:, 0].tolist()]


def test_every_row_once_per_epoch_with_its_own_columns():
    batches = list(shard().epoch(0))
    assert [len(batch["label"]) for batch in batches] == [64] * 15 + [40]
    rows = torch.cat([batch["x_num"][:, 0] for batch in batches]) / 3
    assert sorted(rows.long().tolist()) == list(range(ROWS))
    for batch in batches:  # the permutation moved whole rows: x_cat and label still belong to their x_num
        index = (batch["x_num"][:, 0] / 3).long()
        assert torch.equal(batch["x_cat"], torch.from_numpy(held_rows(ROWS).arrays["x_cat"])[index])
        assert torch.equal(batch["label"], (index % 2).float())
        assert {name: tensor.dtype for name, tensor in batch.items()} == BATCH_DTYPES


def test_the_order_depends_on_seed_rank_and_epoch_only():
    assert order(shard(), 3) == order(shard(), 3)  # a resumed run rebuilds the same batches
    assert order(shard(), 3) != order(shard(), 4)
    assert order(shard(), 3) != order(shard(rank=1), 3)
    assert order(shard(), 3) != order(shard(seed=8), 3)
    assert order(shard(), 0) != sorted(order(shard(), 0))  # shuffled, not the shard's order


def test_the_trainer_holds_the_shard_only_when_it_fits_the_budget():
    spec = network_spec("mlp", 3, [7, 7], hidden=[8], dropout=0.0)
    assert row_bytes(spec) == sum(tensor[:1].element_size() * tensor[:1].nelement()
                                  for tensor in next(held_rows(1).iter_torch_batches(1, BATCH_DTYPES, None)).values())

    def held(rows: int, megabytes: int, workers: int = 1) -> bool:
        config = PipelineConfig()
        config = config.model_copy(update={"train": config.train.model_copy(
            update={"cache_train_mb": megabytes, "num_workers": workers})})
        return loop_config(config, spec, rows, None, pafs.LocalFileSystem(), "/tmp/run", None).train_in_memory

    per_mb = 2**20 // row_bytes(spec)
    assert held(per_mb, 1) and not held(per_mb + 1, 1)
    assert held(2 * per_mb, 1, workers=2)  # the budget is per worker: each holds its own shard
    assert not held(1, 0)  # 0 MB: always stream


def test_training_finishes_with_mlflow_down_and_logs_what_it_kept_once_it_is_back():
    """The rank-0 logger never fails a training for its metrics: calls that fail (at once or asynchronously) are
    kept and tried again at the final flush; what still fails is only warned about."""
    from mlscale.train.loop import _MlflowLogger

    class Failed:
        def wait(self):
            raise ConnectionError("MLflow is unreachable")

    class Client:
        def __init__(self):
            self.up, self.logged = False, []

        def log_batch(self, run_id, metrics, synchronous=True):
            if not self.up:
                if synchronous:
                    raise ConnectionError("MLflow is unreachable")
                return Failed()
            self.logged.append([metric.key for metric in metrics])

    logger = _MlflowLogger(None)
    logger.run_id, logger.client = "run-1", Client()
    logger.log({"val_auc": 0.8, "step": 10}, 10)
    logger.log({"val_auc": 0.81, "step": 20}, 20)
    logger.flush()  # still down: no exception, both kept
    assert len(logger.unlogged) == 2 and logger.client.logged == []
    logger.client.up = True
    logger.flush()
    assert logger.unlogged == [] and logger.client.logged == [["val_auc"], ["val_auc"]]
