"""Where things are stored: the embedded defaults, and the settings that point elsewhere.

The same code runs on a laptop and beyond one machine; only these settings change:

| variable | default (embedded) |
| --- | --- |
| `DEEPGATE_HOME` | the current directory (the project root) |
| `MLFLOW_TRACKING_URI` | `sqlite:///$DEEPGATE_HOME/mlflow/mlflow.db` |
| `MLFLOW_REGISTRY_URI` | the tracking URI |
| `DEEPGATE_ARTIFACT_ROOT` | `$DEEPGATE_HOME/mlflow/artifacts` (ignored with a tracking server) |
| `DEEPGATE_DVC_REMOTE` | `$DEEPGATE_HOME/.dvc-storage` (or `s3://bucket/path`) |
| `PREFECT_API_URL` | unset: Prefect's local ephemeral server (home `$DEEPGATE_HOME/.prefect`) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Resolved storage settings.

    Attributes:
        home: Project workspace: holds params.yaml, data/, mlflow/ and the DVC repository.
        tracking_uri: MLflow tracking URI.
        registry_uri: MLflow registry URI.
        artifact_root: Artifact location for new experiments on a file/sqlite store, else None.
        dvc_remote: DVC remote URL.
    """

    home: Path
    tracking_uri: str
    registry_uri: str
    artifact_root: str | None
    dvc_remote: str

    @property
    def data_dir(self) -> Path:
        """Where canonical datasets are written (DVC-tracked)."""
        return self.home / "data"

    @property
    def params_path(self) -> Path:
        """The project's params.yaml."""
        return self.home / "params.yaml"


def load_settings(home: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Resolve settings from the environment (or `env`), with embedded defaults under `home`."""
    env = dict(os.environ) if env is None else env
    root = (home or Path(env.get("DEEPGATE_HOME") or Path.cwd())).resolve()
    tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    # An explicit artifact root only makes sense for the embedded store; a tracking server
    # decides its own (proxied S3, say).
    embedded = tracking.startswith(("sqlite:", "file:")) or "://" not in tracking
    artifact_root = env.get("DEEPGATE_ARTIFACT_ROOT") or (
        (root / "mlflow" / "artifacts").as_uri() if embedded else None
    )
    return Settings(
        home=root,
        tracking_uri=tracking,
        registry_uri=env.get("MLFLOW_REGISTRY_URI") or tracking,
        artifact_root=artifact_root,
        dvc_remote=env.get("DEEPGATE_DVC_REMOTE") or str(root / ".dvc-storage"),
    )
