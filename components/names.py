"""Names shared by every layer: experiments, registered models, aliases and tags.

Kept in one module so that the flow, the CLI, the serving app and the tests can never
disagree on how a thing is called in MLflow.
"""

from __future__ import annotations

CHAMPION = "champion"
CHALLENGER = "challenger"

# Version tags (lineage and verdicts). Every registered version carries all of them.
TAG_PIPELINE = "deepgate.pipeline"
TAG_GIT_COMMIT = "deepgate.git_commit"
TAG_CODE_HASH = "deepgate.code_hash"
TAG_DATA_VERSION = "deepgate.data_version"
TAG_DATA_PATH = "deepgate.data_path"  # the canonical file, relative to the workspace
TAG_RAW_DATA_VERSION = "deepgate.raw_data_version"  # the input file as it arrived
TAG_SUITE_HASH = "deepgate.suite_hash"
TAG_BASE_MODEL = "deepgate.base_model"  # transfer / warm start: the version it started from
TAG_QUARANTINED = "deepgate.quarantined_rows"  # suspected mislabeled rows left out of training
TAG_TRAIN_DEVICE = "deepgate.train.device"  # where the fit ran, e.g. "cpu", "cuda:0 x4 (bf16-mixed)"
TAG_RESUMED_FROM = "deepgate.train.resumed_from"  # "epoch E step S" of a checkpoint resumed, or "-"
TAG_CONFIG_HASH = "deepgate.config_hash"
TAG_FINGERPRINT = "deepgate.fingerprint"
TAG_SEED = "deepgate.seed"
TAG_FLOW_RUN_ID = "deepgate.prefect_flow_run_id"
TAG_VERDICT = "deepgate.verdict"  # "promoted" | "rejected" | "pending" | "aborted"
TAG_REASONS = "deepgate.reasons"
TAG_GATE_PREFIX = "deepgate.gate."  # + gate name -> "pass" | "fail" | "not_applicable"
TAG_PROMOTED_AT = "deepgate.promoted_at"
TAG_PROMOTED_BY = "deepgate.promoted_by"  # who promoted it by hand (deepgate promote)
TAG_APPROVAL_DECISION = "deepgate.approval.decision"  # "approved" | "rejected" | "timeout" | "refused"
TAG_APPROVAL_BY = "deepgate.approval.by"
TAG_APPROVAL_COMMENT = "deepgate.approval.comment"
TAG_PREVIOUS_CHAMPION = "deepgate.previous_champion"

# Crash marking and resume of retraining runs (components/recovery.py, components/resume.py).
TAG_PROCESS = "deepgate.process"  # "host:pid:start" of the process running the run (crash detection)
TAG_OUTCOME = "deepgate.outcome"  # "promoted" | "rejected" | "up_to_date" | "stopped" | "crashed"
TAG_CRASH = "deepgate.crash"  # on a run found dead: what found it, when, and what was undone
TAG_RESUMED_FROM_RUN = "deepgate.resumed_from"  # the failed MLflow run this run resumed
TAG_REUSED = "deepgate.reused"  # stages whose results came from that run, e.g. "validate,train"
TAG_TRAINED_IN = "deepgate.train.run"  # the MLflow run whose fit produced the weights
# Version tag, JSON: {"state": "open" | "done" | "rolled_back", "step": the step last started,
# "undo": [[alias, previous version or null], ...], "process": the releasing process, as TAG_PROCESS}.
TAG_RELEASE = "deepgate.release"
TRAINED_PACKAGE = "train/package"  # run artifact: the fitted model package (safetensors + spec.json)
TRAIN_RESULT = "train/result.json"  # run artifact: how that fit went (history, epochs, device)
OUTCOME_CRASHED = "crashed"

# Run tags of `deepgate tune`: the search's parent run and one nested run per trial.
TAG_RUN_KIND = "deepgate.run_kind"  # "tune" | "tune_trial" | "monitor"
TAG_TUNE_TRIAL = "deepgate.tune.trial"  # Optuna's trial number
TAG_TUNE_STATE = "deepgate.tune.state"  # "complete" | "pruned" | "failed"
TAG_TUNE_BASELINE = "deepgate.tune.baseline"  # "true" on the trial that replayed the current settings
RUN_KIND_TUNE = "tune"
RUN_KIND_TUNE_TRIAL = "tune_trial"
RUN_KIND_MONITOR = "monitor"  # a `deepgate monitor` comparison of logged predictions with training data
TAG_MONITOR_VERDICT = "deepgate.monitor.verdict"  # "stable" | "drifted" | "insufficient_data" | "no_reference"
TAG_MONITOR_CHAMPION = "deepgate.monitor.champion"  # the champion version compared with

# Prefect events that start retraining (each deployment's triggers match them by resource id).
EVENT_DATASET_UPDATED = "deepgate.dataset.updated"  # ingest saw a data version not trained on yet
EVENT_DRIFT_DETECTED = "deepgate.drift.detected"  # monitoring found production inputs drifted

VERDICT_PROMOTED = "promoted"
VERDICT_REJECTED = "rejected"
VERDICT_PENDING = "pending"
VERDICT_AWAITING_APPROVAL = "awaiting_approval"  # the gates passed; a person decides
VERDICT_ABORTED = "aborted"  # a registry step failed; the aliases were put back


def experiment_name(pipeline: str) -> str:
    """MLflow experiment that holds every retraining run of a pipeline."""
    return f"deepgate-{pipeline}"


def pipeline_resource(pipeline: str) -> dict[str, str]:
    """The Prefect event resource of a pipeline: what its deployment's triggers match on."""
    return {"prefect.resource.id": f"deepgate.pipeline.{pipeline}", "deepgate.pipeline": pipeline}


def registered_model_name(pipeline: str) -> str:
    """MLflow registered model of a pipeline."""
    return f"deepgate-{pipeline}"


CONFIG_ARTIFACT = "config.json"  # the run's whole pipeline config, as validated
