"""From YAML to a validated config: ${VAR} expansion inside values, dotted overrides (`--set`), and one
readable message naming each bad field and value."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlscale.config.pipeline import PipelineConfig
from mlscale.errors import ConfigError, describe_fields

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ${VAR} and ${VAR:-default} in one string value so one YAML serves laptop and cluster (and a secret
    travels to a job or a replica as a reference to the variable that holds it, never as its value)."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"environment variable {name} is not set and has no default (${{{name}:-...}})")
            return default
        return value

    return _ENV_PATTERN.sub(replace, text)


def _expand_values(node: Any) -> Any:
    """${VAR} expanded inside parsed string values only: comments are never read, and a variable holding a newline
    or ' #' stays one value instead of changing the YAML's structure. A value that is one reference expanding to
    nothing (`address: ${MLSCALE_RAY_ADDRESS:-}`) is unset (null), as an empty YAML value is."""
    if isinstance(node, dict):
        return {key: _expand_values(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand_values(value) for value in node]
    if not isinstance(node, str):
        return node
    expanded = expand_env(node)
    return None if expanded == "" and _ENV_PATTERN.fullmatch(node.strip()) else expanded


def _describe(error: ValidationError, source: str) -> str:
    lines = describe_fields(error.errors())
    return "\n".join([f"invalid pipeline config ({source}):", *(f"  {line}" for line in lines)])


def config_from_dict(data: dict[str, Any], source: str = "dict") -> PipelineConfig:
    """A config from a nested dict (as YAML would give it).

    Args:
        data: the sections and their values, e.g. {"train": {"epochs": 2}}.
        source: where the data came from, named in error messages.

    Returns:
        The validated config.

    Raises:
        ConfigError: a field is unknown or a value is invalid; the message names each field and value.
    """
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


EXAMPLES = Path(__file__).parent.parent / "configs"  # shipped in the package: a plain `pip install` can run them


def example_config(name: str | Path) -> Path | None:
    """A built-in example config by name (`flights`, `flights-small`), when `name` is not a file of its own."""
    if Path(name).exists() or Path(name).name != str(name):
        return None
    found = EXAMPLES / f"{Path(name).name.removesuffix('.yaml')}.yaml"
    return found if found.is_file() else None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load a YAML pipeline config, then apply dotted overrides.

    `${VAR}` and `${VAR:-default}` are expanded inside string values (never in comments or keys), the overrides'
    values included.

    Args:
        path: the YAML file, or the name of a built-in example (`flights`, `flights-small`); None starts from the
            built-in defaults (the flights example).
        overrides: dotted field -> value, e.g. {"train.epochs": 2, "serve.port": 8001}, applied after the file.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is missing or not YAML, a variable is unset, or a field or value is invalid.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = example_config(path) or Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (or name a built-in example: "
                              f"{', '.join(sorted(p.stem for p in EXAMPLES.glob('*.yaml')))})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
        source = str(path)
        data = _expand_values(data)
    for dotted, value in _expand_values(overrides or {}).items():  # ${VAR} as in the file: how secrets travel
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data, source)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["train.epochs=2", "serve.port=8001"] -> {"train.epochs": 2, ...}; values are parsed as JSON when they can be."""
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"an override must look like key=value, got {item!r}")
        try:
            pairs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            pairs[key.strip()] = value
    return pairs
