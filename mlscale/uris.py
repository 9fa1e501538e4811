"""Registry URIs, written and read in one place: models:/<name>/<version> pins a version, models:/<name>@<alias>
follows an alias. A base module (the config's default serving URI is one of these)."""

from __future__ import annotations

MODELS = "models:/"


def version_uri(name: str, version: str | int) -> str:
    return f"{MODELS}{name}/{version}"


def alias_uri(name: str, alias: str) -> str:
    return f"{MODELS}{name}@{alias}"


def model_uri(name: str, reference: str) -> str:
    """A version for a number, an alias otherwise; a full models:/ or runs:/ URI is kept as it is."""
    if reference.startswith((MODELS, "runs:/")):
        return reference
    return version_uri(name, reference) if reference.isdigit() else alias_uri(name, reference)


def parse_models_uri(uri: str) -> tuple[str, str] | None:
    """models:/name/3 -> (name, "3"); models:/name@alias -> (name, alias); anything else -> None."""
    if not uri.startswith(MODELS):
        return None
    rest = uri.removeprefix(MODELS)
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return name, alias
    name, _, version = rest.rpartition("/")
    return (name, version) if name and version.isdigit() else None
