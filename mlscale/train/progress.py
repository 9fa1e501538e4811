"""A record of what every attempt of a training run did, kept beside its checkpoints.

Ray Train restarts the workers from the last checkpoint after a failure, and a rerun of the job restores from it
too; neither says how much work was thrown away. Rank 0 of each attempt overwrites one small JSON file (where it
started, how far it got) every few steps (at most twice a second); reading them all back gives the attempts and
the repeated steps.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from mlscale.data.storage import write_text

PROGRESS_DIR = "mlscale-progress"


@dataclass
class Attempt:
    started_at: float
    started_from_step: int
    last_step: int
    finished: bool


class ProgressLog:
    def __init__(self, filesystem: pafs.FileSystem, run_dir: str) -> None:
        self.filesystem, self.directory = filesystem, f"{run_dir.rstrip('/')}/{PROGRESS_DIR}"

    def start(self, from_step: int) -> AttemptWriter:
        self.filesystem.create_dir(self.directory, recursive=True)
        return AttemptWriter(self, f"{self.directory}/{uuid.uuid4().hex}.json", from_step)

    def attempts(self) -> list[Attempt]:
        """Every attempt so far, oldest first."""
        try:
            infos = self.filesystem.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        except FileNotFoundError:
            return []
        found = []
        for info in infos:
            if info.type == pafs.FileType.File and info.path.endswith(".json"):
                with self.filesystem.open_input_stream(info.path) as stream:
                    found.append(Attempt(**json.loads(stream.read())))
        return sorted(found, key=lambda attempt: attempt.started_at)

    def write(self, path: str, attempt: Attempt) -> None:
        """Replace one record whole: a reader never sees it half written. On a local disk that takes a temporary
        file and a rename; an object store makes the new object visible only once it is complete."""
        write_text(self.filesystem, path, json.dumps(attempt.__dict__))


def repeated_steps(attempts: list[Attempt]) -> int:
    """Steps done by an attempt beyond the point the next attempt restarted from: work done twice."""
    return sum(max(0, before.last_step - after.started_from_step) for before, after in itertools.pairwise(attempts))


class AttemptWriter:
    def __init__(self, log: ProgressLog, path: str, from_step: int) -> None:
        self.log, self.path = log, path
        self.attempt = Attempt(started_at=time.time(), started_from_step=from_step, last_step=from_step,
                               finished=False)
        self._write()

    def step(self, step: int, finished: bool = False) -> None:
        self.attempt.last_step, self.attempt.finished = step, finished
        self._write()

    def _write(self) -> None:
        self.log.write(self.path, self.attempt)
        self.written_at = time.monotonic()
