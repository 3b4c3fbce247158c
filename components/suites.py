"""Expectation suites stored in the repository, one reviewable JSON file per pipeline.

The flow validates every new data version against `expectations/<pipeline>.json`. The first
run of a pipeline writes that file from its reference data; from then on it is the user's:
edits (a tightened range, an added expectation) are kept, and only `deepgate suite` rebuilds
it on purpose.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SUITES_DIR = "expectations"


def suite_path(home: Path, pipeline: str) -> Path:
    """Where a pipeline's suite is stored."""
    return home / SUITES_DIR / f"{pipeline}.json"


def _canonical(suite: dict[str, Any]) -> str:
    # Sorted keys and a fixed indent: a rebuild from the same data gives the same file, and a
    # review diff shows only real changes.
    return json.dumps(suite, indent=2, sort_keys=True) + "\n"


def load_suite(path: Path) -> dict[str, Any] | None:
    """The stored suite, or None when there is none yet.

    Raises:
        ValueError: The file is not valid JSON (a broken hand edit), naming the file and line.
    """
    if not path.exists():
        return None
    try:
        suite = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON (line {error.lineno}): {error.msg}") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"{path} is not an expectation suite: it needs a list under 'expectations'")
    return suite


def save_suite(path: Path, suite: dict[str, Any]) -> Path:
    """Write a suite atomically in its canonical layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_canonical(suite))
    tmp.replace(path)
    return path


def suite_hash(suite: dict[str, Any]) -> str:
    """Version of a suite: its content hash (recorded on every run and model version)."""
    return hashlib.sha256(_canonical(suite).encode()).hexdigest()[:16]
