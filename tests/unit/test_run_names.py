"""Without a configured run name, an interrupted training run is resumed by a rerun; a finished one never is."""

import pyarrow.fs as pafs

from mlscale.config import load_config
from mlscale.train.progress import ProgressLog
from mlscale.train.trainer import checkpoint_storage, resumable_run_name


def test_interrupted_runs_are_resumed_and_finished_ones_are_not(tmp_path):
    config = load_config(None, {"storage.root": str(tmp_path)})
    first = resumable_run_name(config, "data-a")
    assert first == resumable_run_name(config, "data-a") and first.endswith("-1")
    filesystem, root = checkpoint_storage(config)
    attempt = ProgressLog(filesystem, f"{root}/{first}").start(0)
    attempt.step(120)  # the job was stopped here
    assert resumable_run_name(config, "data-a") == first
    attempt.step(300, finished=True)
    second = resumable_run_name(config, "data-a")
    assert second != first and second.endswith("-2")
    assert resumable_run_name(config, "data-b") != first  # other data: another run
    other = load_config(None, {"storage.root": str(tmp_path), "train.optimizer.lr": 0.1})
    assert resumable_run_name(other, "data-a").rsplit("-", 1)[0] != first.rsplit("-", 1)[0]
    fixed = load_config(None, {"storage.root": str(tmp_path), "train.run_name": "mine"})
    assert resumable_run_name(fixed, "data-a") == "mine"


def test_a_reader_never_sees_a_record_half_written(tmp_path):
    """Jobs and tests poll the records while rank 0 rewrites them: each read must parse."""
    import threading
    import time

    log = ProgressLog(pafs.LocalFileSystem(), str(tmp_path))
    writer = log.start(0)
    done = threading.Event()

    def keep_writing() -> None:
        step = 0
        while not done.is_set():
            step += 1
            writer.step(step)

    thread = threading.Thread(target=keep_writing)
    thread.start()
    reads, deadline = 0, time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline:
            assert len(log.attempts()) == 1
            reads += 1
    finally:
        done.set()
        thread.join()
    assert reads > 100 and log.attempts()[0].last_step > 100
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left behind
