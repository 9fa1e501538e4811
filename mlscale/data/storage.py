"""Where outputs are written: on a local disk write-then-rename, so that a reader never sees a half-written output;
on object storage (which has no rename) plain reads and writes of whole objects through the same pyarrow API."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from mlscale.errors import ConfigError


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a staging folder beside target; on success it replaces target in one rename, on error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


def refuse_foreign(target: Path, marker: str, field: str) -> None:
    """An output folder is replaced only when it is one: absent, empty, or holding `marker` (the manifest this
    kind of output writes). Anything else at `target` is somebody's data, named in the error, never renamed aside
    and deleted.

    Raises:
        ConfigError: target exists and is not such an output.
    """
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink() and ((target / marker).is_file() or not any(target.iterdir())):
        return
    what = "a file" if target.is_file() else "a link" if target.is_symlink() else f"a folder without {marker}"
    raise ConfigError(f"{field} {str(target)!r} is {what}, not an output of this stage: refusing to replace it "
                      f"(name a new folder, or delete it yourself)")


def set_aside(staging: Path, target: Path) -> Path:
    """Keep a staged output that failed its checks as `<target>.rejected` (replacing an older one), for a person to
    read; returns where it went."""
    rejected = target.with_name(f"{target.name}.rejected")
    shutil.rmtree(rejected, ignore_errors=True)
    os.replace(staging, rejected)
    return rejected


def is_local(filesystem: pafs.FileSystem) -> bool:
    return isinstance(filesystem, pafs.LocalFileSystem)


def as_uri(filesystem: pafs.FileSystem, path: str) -> str:
    """How a user (and `sources.resolve`) names a path inside a filesystem: the path itself, or s3://bucket/key."""
    return path if is_local(filesystem) else f"{filesystem.type_name}://{path}"


def exists(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def read_text(filesystem: pafs.FileSystem, path: str) -> str:
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(filesystem: pafs.FileSystem, path: str, text: str) -> None:
    """One object written whole (a single PUT on object storage, so readers see the old or the new text)."""
    if is_local(filesystem):
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        staged = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with filesystem.open_output_stream(staged) as stream:
            stream.write(text.encode())
        filesystem.move(staged, path)
        return
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())
