"""Cache keys: a stage's output is reused only when its data, its config and the code that made it are unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent  # the mlscale package folder


def code_hash(*subpackages: str) -> str:
    """Hash of the source files of the given mlscale subpackages/modules (works without git, e.g. pip installs)."""
    digest = hashlib.sha256()
    for name in subpackages:
        path = _PACKAGE / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        for file in files:
            digest.update(str(file.relative_to(_PACKAGE)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
