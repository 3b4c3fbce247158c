"""DVC versions: the md5 is the data version; unchanged data is not pushed again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from components.lineage import fingerprint
from components.settings import load_settings
from components.versioning import version_dataset


def test_same_bytes_same_version_and_no_second_push(tmp_path: Path) -> None:
    root, remote = tmp_path / "project", tmp_path / "remote"
    path = root / "data" / "demo" / "dataset.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"x": [1, 2, 3]}).to_parquet(path, index=False)

    first = version_dataset(root, path, str(remote))
    assert first.md5 == hashlib.md5(path.read_bytes()).hexdigest()
    assert first.pushed == 1
    assert (remote / "files" / "md5" / first.md5[:2] / first.md5[2:]).is_file()

    again = version_dataset(root, path, str(remote))
    assert (again.md5, again.pushed) == (first.md5, 0)

    pd.DataFrame({"x": [1, 2, 4]}).to_parquet(path, index=False)
    changed = version_dataset(root, path, str(remote))
    assert changed.md5 != first.md5 and changed.pushed == 1


def test_settings_default_to_the_workspace_and_follow_the_environment(tmp_path: Path) -> None:
    local = load_settings(tmp_path, env={})
    assert local.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}"
    assert local.registry_uri == local.tracking_uri
    assert local.dvc_remote == str(tmp_path.resolve() / ".dvc-storage")
    remote = load_settings(
        tmp_path, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "DEEPGATE_DVC_REMOTE": "s3://bucket/dg"}
    )
    assert remote.tracking_uri == "http://127.0.0.1:5000"
    assert remote.artifact_root is None  # a tracking server decides where artifacts go
    assert remote.dvc_remote == "s3://bucket/dg"


def test_fingerprint_changes_with_any_input() -> None:
    base = fingerprint("d1", "c1", "k1")
    assert base == fingerprint("d1", "c1", "k1")
    assert len({base, fingerprint("d2", "c1", "k1"), fingerprint("d1", "c2", "k1"), fingerprint("d1", "c1", "k2")}) == 4
