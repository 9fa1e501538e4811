"""Where a model came from: data fingerprint, config hash, code version."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlscale.version import __version__


def code_version() -> str:
    """The git commit of the mlscale source (with '-dirty' for local edits), else the package version."""
    source = Path(__file__).resolve().parents[2]  # the folder holding the mlscale package
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"{commit}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"mlscale-{__version__}"
