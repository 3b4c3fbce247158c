"""One registry content and one comparison, for the champion lookups against the MLflow client.

Used on the embedded sqlite store (tests/components/test_champion_lookup.py) and on a real
`mlflow server` with proxied S3 artifacts (tests/integration/test_servers.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from components import names
from components.registry import Registry

ALIASES = {names.CHAMPION: "2", names.CHALLENGER: "3", "previous": "1"}


def populate(registry: Registry, pipeline: str) -> dict[str, dict[str, bytes]]:
    """Three versions of `pipeline`, each with its own package files and tags, and three aliases.

    Returns:
        Each version's package files (relative path -> bytes), as a copy must reproduce them.
    """
    name = names.registered_model_name(pipeline)
    registry.client.create_registered_model(name)
    packages = {}
    for number in (1, 2, 3):
        files = {
            "spec.json": f'{{"version": {number}, "note": "é ✓"}}'.encode(),
            "model.onnx": bytes(range(256)) * (40 * number),  # binary, not a multiple of a block
            "nested/extra weights.bin": bytes([number]) * 1000,  # a subfolder and a space
        }
        run_id = registry.start_run(pipeline, "retrain", {})
        with tempfile.TemporaryDirectory() as tmp:
            for relative, content in files.items():
                (Path(tmp) / relative).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / relative).write_bytes(content)
            registry.log_artifacts(run_id, Path(tmp), "model/artifacts/package")
        registry.log_text(run_id, "not part of the package", "model/MLmodel")
        registry.end_run(run_id)
        source = f"{registry.client.get_run(run_id).info.artifact_uri}/model"
        tags = {names.TAG_DATA_VERSION: f"md5-{number}", "note": f"version {number}"}
        version = registry.client.create_model_version(name, source, run_id, tags=tags)
        assert str(version.version) == str(number)
        packages[str(number)] = files
    for alias, number in ALIASES.items():
        registry.client.set_registered_model_alias(name, alias, number)
    return packages


def tree(folder: Path) -> dict[str, bytes]:
    """A folder's files: relative path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_agrees(
    lookup: Any, registry: Registry, pipeline: str, packages: dict[str, dict[str, bytes]], tmp: Path
) -> None:
    """`lookup` answers every question as the MLflow client does, and copies every package byte for byte."""
    for alias in [*ALIASES, "nobody"]:
        expected = registry.alias_version(pipeline, alias)
        assert lookup.alias_version(pipeline, alias) == expected, alias
        assert (expected is None) == (alias == "nobody")
    assert lookup.alias_version(f"{pipeline}-unregistered", names.CHAMPION) is None
    for version, files in packages.items():
        ours = lookup.copy_package(pipeline, version, tmp / f"ours-{version}")
        theirs = registry.copy_package(pipeline, version, tmp / f"theirs-{version}")
        assert tree(ours) == tree(theirs) == files, version
