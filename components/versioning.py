"""Dataset versions with DVC: snapshot a file, push it to the remote, name it by its hash.

The dataset's DVC md5 is its data version: unchanged data gives the same version and is
neither re-hashed expensively nor copied to the remote again.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.dataset import Dataset, read_canonical

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataVersion:
    """A versioned dataset file.

    Attributes:
        path: The file, relative to the DVC repository root.
        md5: DVC's content hash: the data version.
        size: Bytes.
        pushed: Files sent to the remote by this call (0 when it already had them).
    """

    path: str
    md5: str
    size: int
    pushed: int

    @property
    def short(self) -> str:
        """The first 8 characters of the hash, for summaries."""
        return self.md5[:8]


def open_repo(root: Path, remote_url: str):  # -> dvc.repo.Repo (typed loosely: dvc ships no stubs)
    """Open (or create) the DVC repository at `root` with `remote_url` as default remote.

    A repository inside a git work tree uses git; elsewhere (tests, a bare folder) it is
    created without SCM. The remote goes to `.dvc/config.local`, so pointing at another
    remote is a setting, never an edit of a tracked file.
    """
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        in_git = any((parent / ".git").exists() for parent in [root, *root.parents])
        Repo.init(str(root), no_scm=not in_git, subdir=in_git and not (root / ".git").exists())
    repo = Repo(str(root))
    # The pointer files are the user's to commit; don't print DVC's "git add" hints mid-run.
    repo.scm_context.quiet = True
    with repo.config.edit("local") as conf:
        conf["remote"]["deepgate"] = {"url": remote_url}
        conf["core"]["remote"] = "deepgate"
    return repo


def _stage_producing(repo, relative: str):  # -> dvc Stage | None
    """The dvc.yaml stage whose output is `relative`, if there is one."""
    for stage in repo.index.stages:
        if stage.is_data_source:  # a .dvc file from `dvc add`, not a dvc.yaml stage
            continue
        if any(str(out.def_path) == relative for out in stage.outs):
            return stage
    return None


def version_dataset(root: Path, path: Path, remote_url: str) -> DataVersion:
    """Record the file in DVC and push it to the remote; return its version.

    A file that a `dvc.yaml` stage produces (the bundled pipelines' `ingest` stages) is
    recorded with `dvc commit` of that stage, so `dvc.lock` holds its hash; any other file
    (a user's pipeline) with `dvc add`.

    Args:
        root: The DVC repository root (the project workspace).
        path: The dataset file, inside `root`.
        remote_url: DVC remote (a local folder by default, `s3://...` beyond one machine).
    """
    repo = open_repo(root, remote_url)
    absolute = path.resolve()
    relative = str(absolute.relative_to(root.resolve()))
    try:
        stage = _stage_producing(repo, relative)
        if stage is not None:
            repo.commit(stage.addressing, force=True)
            stage = repo.stage.collect(stage.addressing)[0]
            target = stage.addressing
        else:
            # Absolute targets: DVC resolves relative ones against the process's cwd, not `root`.
            stage = repo.add(str(absolute))[0]
            target = str(absolute)
        out = next(o for o in stage.outs if str(o.def_path) == relative or o.fs_path == str(absolute))
        pushed = repo.push(targets=[target])
    finally:
        repo.close()
    logger.info("dataset %s at md5 %s (%d file(s) pushed)", relative, out.hash_info.value, pushed)
    return DataVersion(relative, str(out.hash_info.value), int(out.meta.size or 0), int(pushed))


def fetch_version(root: Path, md5: str, remote_url: str, destination: Path) -> Path:
    """Copy the bytes of a data version (by its DVC md5) to `destination`.

    The local DVC cache is tried first, then the remote, so a version pushed from another
    machine (or a cache that was cleaned) can still be read back.

    Raises:
        FileNotFoundError: Neither the cache nor the remote holds that version.
    """
    repo = open_repo(root, remote_url)
    try:
        cached = Path(repo.cache.local.oid_to_path(md5))
        destination.parent.mkdir(parents=True, exist_ok=True)
        if cached.is_file():
            shutil.copyfile(cached, destination)
            return destination
        odb = repo.cloud.get_remote_odb("deepgate")
        remote_path = odb.oid_to_path(md5)
        if not odb.fs.exists(remote_path):
            raise FileNotFoundError(f"data version {md5} is neither in the DVC cache nor on the remote {remote_url}")
        odb.fs.get_file(remote_path, str(destination))
        return destination
    finally:
        repo.close()


def snapshot_raw(root: Path, source: Path, pipeline: str, remote_url: str) -> DataVersion:
    """Version the file exactly as it arrived (before any parsing) as `data/<pipeline>/raw<suffix>`.

    A file that later fails to load (empty, truncated, binary) is still recorded, so the
    rejected input can be inspected by its version.
    """
    target = root / "data" / pipeline / f"raw{source.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return version_dataset(root, target, remote_url)


def read_data_version(root: Path, md5: str, remote_url: str, filename: str, target: str) -> Dataset:
    """A canonical dataset file of a given version, read back from DVC.

    Args:
        root: The DVC repository root.
        md5: The data version.
        remote_url: DVC remote, used when the local cache lacks the version.
        filename: Its canonical file name (`dataset.parquet` or `dataset.npz`: tells the format).
        target: The label column.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return read_canonical(fetch_version(root, md5, remote_url, Path(tmp) / filename), target)
