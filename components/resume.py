"""Resuming a failed retraining run: which run, and which of its results a new run may reuse.

A run records, for each expensive stage, a key of that stage's inputs (a run tag
``deepgate.stage_key.<stage>``) beside its result (an MLflow artifact):

- ``validate``: the data version (DVC md5), the expectation suite's hash, the `data` and
  `gates.validation` config, and the code; its result is the validation gate's report.
- ``train``: the data version, the config sections that shape the fit (`data`, `split`,
  `train`, `gates.labels`, which decides the quarantined rows), the code and the base model;
  its result is the fitted model package (safetensors weights + spec.json, never a pickle)
  and how the fit went.

A resumed run reuses a stage's result only when the failed run's key equals the key of the
current inputs. Gate thresholds are not in the training key on purpose: tightening or
loosening a gate re-judges the same model, it does not retrain it. Every gate runs again
on the resumed run: a reused validation report is judged afresh, and the evaluation, bias,
serving and promotion gates always recompute against the current champion.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import names
from components.config import PipelineConfig
from components.gates import Check, GateReport
from components.predictor import Predictor
from components.recovery import ProcessRef
from components.registry import Registry, RunRecord
from components.training import TrainResult

TAG_STAGE_KEY_PREFIX = "deepgate.stage_key."  # + stage name
STAGE_VALIDATE, STAGE_TRAIN = "validate", "train"

_FLOW_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MLFLOW_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ResumeError(ValueError):
    """The run to resume is unknown, of another pipeline, not failed, or still running."""


def _digest(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


def _section_hash(config: PipelineConfig, include: dict[str, Any]) -> str:
    payload = json.dumps(config.model_dump(mode="json", include=include), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def validation_key(data_version: str, suite_hash: str, config: PipelineConfig, code: str) -> str:
    """The key of the validation stage's inputs."""
    sections = _section_hash(config, {"data": True, "gates": {"validation": True}})
    return _digest(STAGE_VALIDATE, data_version, suite_hash, sections, code)


def training_key(data_version: str, config: PipelineConfig, code: str, base_model: str) -> str:
    """The key of the training stage's inputs (`base_model`: the exact base version, or "")."""
    sections = _section_hash(config, {"data": True, "split": True, "train": True, "gates": {"labels": True}})
    return _digest(STAGE_TRAIN, data_version, sections, code, base_model)


@dataclass(frozen=True)
class ResumeSource:
    """A failed run to resume.

    Attributes:
        run_id: Its MLflow run.
        flow_run_id: Its Prefect flow run, when recorded.
        status: FAILED, KILLED, or `crashed` (still RUNNING in the store, its process gone).
        tags: Its run tags (the stage keys among them).
    """

    run_id: str
    flow_run_id: str | None
    status: str
    tags: dict[str, str]

    def key(self, stage: str) -> str | None:
        """The key the failed run recorded for `stage` (None: it never reached it)."""
        return self.tags.get(TAG_STAGE_KEY_PREFIX + stage)

    def describe(self) -> str:
        """One line naming the run, for the summary."""
        flow = f", flow run {self.flow_run_id}" if self.flow_run_id else ""
        return f"MLflow run {self.run_id}{flow}, {self.status.lower()}"


def resolve_resume(registry: Registry, pipeline: str, reference: str) -> ResumeSource:
    """The failed run of `pipeline` named by `reference` (its MLflow run id or Prefect flow-run id).

    Raises:
        ResumeError: No such run, a run of another pipeline or of another kind, or a run that
            finished or is still running; the message says which.
    """
    ref = reference.strip().lower()
    if _MLFLOW_RUN_ID.match(ref):
        record = registry.run_record(ref)
        if record is None:
            raise ResumeError(f"--resume {reference}: no MLflow run with this id in {registry.settings.tracking_uri}")
    elif _FLOW_RUN_ID.match(ref):
        found = registry.find_runs(None, f"tags.`{names.TAG_FLOW_RUN_ID}` = '{ref}'", max_results=1)
        if not found:
            raise ResumeError(
                f"--resume {reference}: no MLflow run records this Prefect flow run (did it die before it started "
                "tracking? then there is nothing to reuse: run the pipeline without --resume)"
            )
        record = found[0]
    else:
        raise ResumeError(
            f"--resume {reference!r}: not a run id; give the failed run's MLflow run id (32 hex digits) or "
            "its Prefect flow-run id (a UUID)"
        )
    return _check(record, pipeline, reference)


def _check(record: RunRecord, pipeline: str, reference: str) -> ResumeSource:
    owner = record.tags.get(names.TAG_PIPELINE)
    if owner != pipeline:
        raise ResumeError(
            f"--resume {reference}: run {record.run_id} is a run of pipeline {owner!r}, not {pipeline!r}"
            if owner
            else f"--resume {reference}: run {record.run_id} is not a deepgate retraining run"
        )
    kind = record.tags.get(names.TAG_RUN_KIND)
    if kind is not None:  # a search, a trial or a monitor comparison: nothing of a retraining to reuse
        raise ResumeError(f"--resume {reference}: run {record.run_id} is a `{kind}` run, not a retraining run")
    status = record.status
    if status == "FINISHED":
        outcome = record.tags.get(names.TAG_OUTCOME, "finished")
        raise ResumeError(
            f"--resume {reference}: run {record.run_id} did not fail (it finished: {outcome}); there is nothing "
            f"to resume. `deepgate run {pipeline}` retrains only what changed"
        )
    if status == "RUNNING":
        process = ProcessRef.parse(record.tags.get(names.TAG_PROCESS))
        state = None if process is None else process.state()
        if state != "gone":
            where = "" if process is None else f" (process {process.to_tag()}, {state})"
            raise ResumeError(f"--resume {reference}: run {record.run_id} is still running{where}; it has not failed")
        status = "crashed"
    return ResumeSource(record.run_id, record.tags.get(names.TAG_FLOW_RUN_ID), status, record.tags)


def retried_source(registry: Registry, pipeline: str, flow_run_id: str) -> ResumeSource | None:
    """The latest failed run of this same flow run: what a retried flow run (`prefect flow-run retry`) resumes."""
    found = registry.find_runs(
        pipeline,
        f"tags.`{names.TAG_FLOW_RUN_ID}` = '{flow_run_id}' and attributes.status != 'FINISHED' "
        f"and attributes.status != 'RUNNING'",
        max_results=1,
    )
    if not found:
        return None
    record = found[0]
    return ResumeSource(record.run_id, flow_run_id, record.status, record.tags)


# ------------------------------------------------------------------- stage results
def log_trained(registry: Registry, run_id: str, package: Path, result: TrainResult) -> None:
    """Keep a fit's model package (a folder written by `Predictor.save`) and its result on the run."""
    registry.log_artifacts(run_id, package, names.TRAINED_PACKAGE)
    registry.log_dict(
        run_id,
        {
            "history": result.history,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "device": result.device,
            "fit_seconds": result.fit_seconds,
            "resumed_from": result.resumed_from,
            "precision": result.precision,
            "processes": result.processes,
        },
        names.TRAIN_RESULT,
    )


def load_trained(registry: Registry, run_id: str) -> tuple[Predictor, TrainResult] | None:
    """The model package and fit result a run kept (:func:`log_trained`); None when it has none."""
    fit = registry.load_run_json(run_id, names.TRAIN_RESULT)
    if fit is None:
        return None
    with registry.run_artifacts(run_id, names.TRAINED_PACKAGE) as package:
        if package is None:
            return None
        predictor = Predictor.load(package, backend="torch")  # safetensors + JSON: nothing unpickled
    result = TrainResult(model=predictor.net, fit_seconds=0.0, **{k: v for k, v in fit.items() if k != "fit_seconds"})
    return predictor, result


def load_gate(registry: Registry, run_id: str, gate: str) -> GateReport | None:
    """A gate's report as a run logged it (`gates/<gate>.json`); None when it has none."""
    data = registry.load_run_json(run_id, f"gates/{gate}.json")
    if data is None:
        return None
    return GateReport(
        gate=data["gate"],
        checks=[Check(**check) for check in data["checks"]],
        applicable=data["status"] != "not_applicable",
        figures=dict(data["figures"]),
    )
