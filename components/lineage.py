"""What a model version is traced back to: git commit, code hash, data version, config hash."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

_PACKAGES = ("components", "flows")


def git_commit(root: Path) -> str:
    """The checked-out commit (with `-dirty` when tracked files changed), or `unknown`."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *_PACKAGES],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def code_hash() -> str:
    """A hash of deepgate's own source (components/ and flows/) as installed and running.

    It changes with any edit to the code that trains and gates models, committed or not, which
    the git commit alone would miss for an uncommitted change.
    """
    digest = hashlib.sha256()
    base = Path(__file__).resolve().parent.parent
    for package in _PACKAGES:
        for path in sorted((base / package).rglob("*.py")):
            digest.update(str(path.relative_to(base)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(data_version: str, config_hash: str, code: str) -> str:
    """Identity of a training run: same data, config and code give the same model."""
    return hashlib.sha256(f"{data_version}:{config_hash}:{code}".encode()).hexdigest()[:16]
