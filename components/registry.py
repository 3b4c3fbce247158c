"""The one edge module that talks to MLflow's client: runs, artifacts, the model registry and aliases.

(`deepgate serve`'s supervisor reads the alias it follows without the client, for speed:
components/champion_lookup.py, checked against this module by its tests.)

Everything goes through an explicit `run_id` (never MLflow's thread-local active run), so
the flow's tasks can log from any thread and a crash cannot leave a wrong run "active".
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import names
from components.settings import Settings

if TYPE_CHECKING:
    from components.predictor import Predictor

logger = logging.getLogger(__name__)

PYFUNC_SOURCE = Path(__file__).with_name("pyfunc_model.py")


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version, as the CLI and the flow need it."""

    version: str
    run_id: str
    aliases: list[str]
    tags: dict[str, str]
    created_ms: int
    source: str


@dataclass(frozen=True)
class RunRecord:
    """A tracking run, as crash cleanup and resume need it."""

    run_id: str
    status: str  # RUNNING | FINISHED | FAILED | KILLED
    experiment_id: str
    tags: dict[str, str]
    start_ms: int


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), child, out)
    else:
        out[prefix] = value


class Registry:
    """MLflow tracking and registry for deepgate pipelines.

    Args:
        settings: Tracking/registry URIs and the embedded artifact root.
    """

    def __init__(self, settings: Settings) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        if settings.tracking_uri.startswith("sqlite:///"):
            Path(settings.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # No mlflow.set_tracking_uri: it also rewrites MLFLOW_TRACKING_URI in os.environ,
        # which would leak one workspace's store into the next Settings of the process.
        self.client = MlflowClient(settings.tracking_uri, settings.registry_uri)

    # ----------------------------------------------------------------- runs and artifacts
    def experiment_id(self, pipeline: str) -> str:
        """The pipeline's experiment, created on first use."""
        name = names.experiment_name(pipeline)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = f"{self.settings.artifact_root}/{pipeline}" if self.settings.artifact_root else None
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except MlflowException as error:
            # Two first runs of a pipeline at once (two workers on one tracking server): the
            # other created it between the lookup and here. Its experiment is this one.
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            created = self.client.get_experiment_by_name(name)
            if created is None:
                raise
            return str(created.experiment_id)

    def start_run(self, pipeline: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        """Open a tracking run (a retraining, a search, or one trial nested under `parent_run_id`); returns its id."""
        if parent_run_id is not None:
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

            tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_run_id}
        run = self.client.create_run(self.experiment_id(pipeline), run_name=run_name, tags=tags)
        return str(run.info.run_id)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log a nested mapping as dotted params (values cut to MLflow's 6,000 characters)."""
        from mlflow.entities import Param

        flat: dict[str, Any] = {}
        _flatten("", params, flat)
        batch = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for start in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float | None], step: int | None = None) -> None:
        """Log the finite metrics of a mapping in one call (None values are skipped)."""
        import math

        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [
            Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Tag a run."""
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        """Log a JSON artifact."""
        self.client.log_dict(run_id, obj, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Log a text (markdown, HTML) artifact."""
        self.client.log_text(run_id, text, artifact_file)

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        """Log a folder (an HTML report, say) under `artifact_path`."""
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib figure as an image artifact."""
        self.client.log_figure(run_id, figure, artifact_file)

    def artifact_link(self, run_id: str, artifact_file: str) -> str:
        """Where a person opens a run's artifact.

        With a tracking server: the run's artifact page in the MLflow UI. With the embedded
        store: the artifact's own URI (a file:// URI a browser opens directly).
        """
        run = self.client.get_run(run_id)
        if self.settings.tracking_uri.startswith(("http://", "https://")):
            base = self.settings.tracking_uri.rstrip("/")
            return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}/artifacts/{artifact_file}"
        return f"{run.info.artifact_uri.rstrip('/')}/{artifact_file}"

    def load_run_json(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of a run, or None when the run has none."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(run_id, artifact_file, tmp)
            except Exception:  # MLflow raises several types for a missing artifact
                return None
            return json.loads(Path(path).read_text())

    def run_record(self, run_id: str) -> RunRecord | None:
        """A run by id, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return _record(self.client.get_run(run_id))
        except MlflowException:
            return None

    def find_runs(self, pipeline: str | None, filter_string: str, max_results: int = 100) -> list[RunRecord]:
        """Runs matching an MLflow filter, newest first: in the pipeline's experiment, or in every one (None)."""
        if pipeline is None:
            experiments = [e.experiment_id for e in self.client.search_experiments()]
        else:
            found = self.client.get_experiment_by_name(names.experiment_name(pipeline))
            experiments = [] if found is None else [found.experiment_id]
        if not experiments:
            return []
        runs = self.client.search_runs(
            experiments, filter_string=filter_string, max_results=max_results, order_by=["attributes.start_time DESC"]
        )
        return [_record(run) for run in runs]

    @contextmanager
    def run_artifacts(self, run_id: str, artifact_path: str) -> Iterator[Path | None]:
        """Download a run's artifact (file or folder) to a temp dir; None when the run has none."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local: Path | None = Path(self.client.download_artifacts(run_id, artifact_path, tmp))
            except Exception:  # MLflow raises several types for a missing artifact
                local = None
            yield local if local is not None and local.exists() else None

    # ----------------------------------------------------------------- models
    def log_model(self, run_id: str, package_dir: Path, pip_requirements: list[str]) -> str:
        """Log a model package as an MLflow pyfunc model under the run; returns its source URI.

        The pyfunc wrapper is saved as code (MLflow's models-from-code), not pickled, and the
        weights stay safetensors: loading never unpickles anything.
        """
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                path=str(target),
                python_model=str(PYFUNC_SOURCE),
                artifacts={"package": str(package_dir)},
                code_paths=[str(Path(__file__).parent)],
                pip_requirements=pip_requirements,
            )
            self.client.log_artifacts(run_id, str(target), "model")
        return f"{self.client.get_run(run_id).info.artifact_uri}/model"

    def set_version_tags(self, pipeline: str, version: str, tags: dict[str, str]) -> None:
        """Tag a model version."""
        name = names.registered_model_name(pipeline)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)

    def alias_version(self, pipeline: str, alias: str) -> VersionInfo | None:
        """The version an alias points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version_by_alias(names.registered_model_name(pipeline), alias)
        except MlflowException:
            return None
        return self._info(found)

    def versions(self, pipeline: str) -> list[VersionInfo]:
        """Every registered version of a pipeline, newest first."""
        from mlflow.exceptions import MlflowException

        name = names.registered_model_name(pipeline)
        try:
            found = self.client.search_model_versions(f"name = '{name}'")
            # Search results carry no aliases; the registered model has them all, in one call.
            aliases = self.client.get_registered_model(name).aliases if found else {}
        except MlflowException:
            return []
        by_version: dict[str, list[str]] = {}
        for alias, number in aliases.items():
            by_version.setdefault(str(number), []).append(alias)
        infos = [self._info(v, by_version.get(str(v.version), [])) for v in found]
        return sorted(infos, key=lambda v: int(v.version), reverse=True)

    def find_by_fingerprint(self, pipeline: str, fingerprint: str) -> VersionInfo | None:
        """The newest version trained from the same data, code and config, if any.

        An aborted version (its release was rolled back) does not count: the same inputs
        deserve another try.
        """
        for info in self.versions(pipeline):
            aborted = info.tags.get(names.TAG_VERDICT) == names.VERDICT_ABORTED
            if info.tags.get(names.TAG_FINGERPRINT) == fingerprint and not aborted:
                return info
        return None

    def data_version_seen(self, pipeline: str, md5: str, *, besides: str) -> bool:
        """Whether a run of the pipeline other than `besides` has already recorded data version `md5`."""
        experiment = self.client.get_experiment_by_name(names.experiment_name(pipeline))
        if experiment is None:
            return False
        runs = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{names.TAG_DATA_VERSION}` = '{md5}' and attributes.run_id != '{besides}'",
            max_results=1,
        )
        return len(runs) > 0

    def resolve(self, uri: str) -> tuple[str, str]:
        """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (registered model name, version).

        Raises:
            ValueError: Not a models:/ URI, or no such model, alias or version.
        """
        from mlflow.exceptions import MlflowException

        body = uri.removeprefix("models:/")
        if body == uri or not body:
            raise ValueError(f"{uri!r} is not a models:/NAME@ALIAS or models:/NAME/VERSION URI")
        try:
            if "@" in body:
                name, alias = body.split("@", 1)
                return name, str(self.client.get_model_version_by_alias(name, alias).version)
            name, _, version = body.partition("/")
            return name, str(self.client.get_model_version(name, version).version)
        except MlflowException as error:
            raise ValueError(f"{uri}: no such registered model version ({error.message})") from None

    def load_predictor(self, reference: str) -> tuple[Predictor, str]:
        """Load a model package by `models:/NAME@ALIAS`, `models:/NAME/VERSION` or folder path.

        Returns:
            The predictor and the exact reference it came from (a version, never an alias),
            for lineage.
        """
        from components.predictor import Predictor

        folder = Path(reference)
        if folder.is_dir():
            return Predictor.load(folder), str(folder)
        name, version = self.resolve(reference)
        with self.package_of(name, version) as package:
            return Predictor.load(package), f"models:/{name}/{version}"

    @contextmanager
    def package(self, pipeline: str, version: str) -> Iterator[Path]:
        """Download a version's model package (spec.json + model.safetensors) to a temp dir."""
        with self.package_of(names.registered_model_name(pipeline), version) as path:
            yield path

    @contextmanager
    def package_of(self, model_name: str, version: str) -> Iterator[Path]:
        """Like :meth:`package`, by registered model name (any pipeline's model)."""
        import mlflow

        source = self.client.get_model_version(model_name, version).source
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=self.settings.tracking_uri
            )
            yield Path(local) / "artifacts" / "package"

    def copy_package(self, pipeline: str, version: str, destination: Path) -> Path:
        """Download a version's model package to a lasting folder (for serving)."""
        with self.package(pipeline, version) as source:
            if destination.exists():
                shutil.rmtree(destination)
            shutil.copytree(source, destination)
        return destination

    def _info(self, version: Any, aliases: list[str] | None = None) -> VersionInfo:
        return VersionInfo(
            version=str(version.version),
            run_id=str(version.run_id),
            aliases=sorted(aliases if aliases is not None else (getattr(version, "aliases", None) or [])),
            tags=dict(version.tags or {}),
            created_ms=int(version.creation_timestamp or 0),
            source=str(version.source),
        )


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run_id=str(run.info.run_id),
        status=str(run.info.status),
        experiment_id=str(run.info.experiment_id),
        tags=dict(run.data.tags or {}),
        start_ms=int(run.info.start_time or 0),
    )
