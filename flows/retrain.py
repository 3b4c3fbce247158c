"""The one DAG. Each task is a thin wrapper over a plain function in components/.

```
ingest -> version (DVC) -> validate (GX) -> check drift -> check labels -> split -> train
   -> evaluate (vs champion) -> audit bias -> register (alias challenger)
   -> validate serving (load + query) -> promote (alias champion)
```
A failing data or label gate raises :class:`GateStopped` before training: nothing is
registered and `champion` does not move. A candidate that fails evaluation, the bias audit
or serving validation is registered with the verdict `rejected` and its reasons.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.events import DeploymentEventTrigger, emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from components import modeling, names
from components.approval import judge_approval
from components.bias import BiasReport, audit_bias, plot_group_rates
from components.config import PipelineConfig
from components.dataset import DataLoadError, Dataset
from components.dataset import ingest as dataset_ingest
from components.drift import detect_drift
from components.evaluation import (
    plot_confusion_matrix,
    plot_learning_curves,
    plot_pr_curve,
    plot_reliability,
    plot_roc_curve,
)
from components.explain import Explanation, explain_predictor, plot_explanation
from components.gates import Check, GateReport
from components.label_noise import LabelNoiseReport, find_label_noise, quarantine
from components.labels import check_labels, leakage
from components.lineage import code_hash, fingerprint, git_commit
from components.model_card import MODEL_CARD, ModelCardInputs, render_model_card
from components.predictor import Predictor
from components.promotion import PromotionDecision, decide_promotion, evaluation_gate
from components.recovery import SweepReport, sweep_crashed_runs, this_process
from components.registry import Registry, VersionInfo
from components.release import Release
from components.resume import (
    STAGE_TRAIN,
    STAGE_VALIDATE,
    TAG_STAGE_KEY_PREFIX,
    ResumeSource,
    load_gate,
    load_trained,
    log_trained,
    resolve_resume,
    retried_source,
    training_key,
    validation_key,
)
from components.settings import Settings, load_settings
from components.split import SplitIndices, limit_shots, split_dataset
from components.suites import load_suite, save_suite, suite_hash, suite_path
from components.summary import RunSummary
from components.validation import build_suite, data_docs_html, validate_dataset
from components.versioning import DataVersion, read_data_version, snapshot_raw, version_dataset
from flows.locks import promotion_lock

SUITE_ARTIFACT = "validation/suite.json"


class GateStopped(RuntimeError):
    """A data or label gate stopped the run before training."""

    def __init__(self, report: GateReport, summary: RunSummary) -> None:
        failed = "; ".join(c.detail for c in report.failures()[:5])
        super().__init__(f"gate '{report.gate}' stopped the run: {failed}")
        self.report = report
        self.summary = summary


# Tasks hold in-memory datasets and models: hashing them for a cache key would cost more
# than the work, so caching is off here and the deliberate skip is the fingerprint check.
_task = task(cache_policy=NO_CACHE, persist_result=False)


@_task(name="crash_cleanup")
def crash_cleanup(registry: Registry, pipeline: str, flow_run_id: str) -> SweepReport:
    """Close the runs of this pipeline whose process died: MLflow run KILLED, flow run Crashed, release settled."""
    report = sweep_crashed_runs(registry, pipeline, by=f"flow run {flow_run_id}")
    for crashed in report.crashed:
        if crashed.flow_run_id:
            _mark_crashed(crashed.flow_run_id, f"its process {crashed.process} died (found by flow run {flow_run_id})")
    for line in report.notes():
        get_run_logger().warning(line)
    return report


def _mark_crashed(flow_run_id: str, message: str) -> None:
    """Set a flow run that is not finished (Running, Paused) to Crashed, with its unfinished task runs.

    A finished flow run is left alone.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            found = client.read_flow_run(UUID(flow_run_id))
        except (ObjectNotFound, ValueError):
            return  # another Prefect server's run, or not a flow run id: nothing to mark here
        if found.state is not None and found.state.is_final():
            return
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[found.id])))
        for task_run in tasks:  # the stage it died in, still "Running" otherwise
            if task_run.state is not None and not task_run.state.is_final():
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
        client.set_flow_run_state(found.id, Crashed(message=message), force=True)


@_task(name="reuse_training")
def reuse_training(registry: Registry, source: ResumeSource) -> modeling.Candidate | None:
    """The failed run's fitted model (its logged safetensors package), or None when it kept none."""
    try:
        kept = load_trained(registry, source.run_id)
    except Exception as error:  # an unreadable package is no reason to fail: training again is
        get_run_logger().warning("could not reuse the model of run %s (%s): training again", source.run_id, error)
        return None
    if kept is None:
        get_run_logger().warning("run %s kept no trained model: training again", source.run_id)
        return None
    predictor, result = kept
    get_run_logger().info("training reused: the model fitted by run %s", source.run_id)
    return modeling.Candidate(predictor, result)


@_task(name="keep_trained")
def keep_trained(registry: Registry, run_id: str, candidate: modeling.Candidate) -> None:
    """Log the fitted model package and fit result on the run, for a resumed run to reuse."""
    with tempfile.TemporaryDirectory() as tmp:
        package = candidate.predictor.save(Path(tmp) / "package")
        log_trained(registry, run_id, package, candidate.result)


@_task(name="ingest")
def ingest(config: PipelineConfig, settings: Settings) -> tuple[Dataset, Path]:
    """Load the source and write its canonical file under data/."""
    return dataset_ingest(config.data, config.name, settings.data_dir)


@_task(name="snapshot_raw")
def snapshot(config: PipelineConfig, settings: Settings) -> DataVersion | None:
    """Version the input file as it arrived (None for bundled sources, or a missing file)."""
    source = Path(config.data.source.partition(":")[2])
    if config.data.kind in ("sklego", "mlxtend") or not source.is_file():
        return None
    return snapshot_raw(settings.home, source, config.name, settings.dvc_remote)


@_task(name="version")
def version(settings: Settings, path: Path) -> DataVersion:
    """Snapshot the canonical file with DVC and push it to the remote."""
    return version_dataset(settings.home, path, settings.dvc_remote)


@_task(name="announce_data_version")
def announce(
    registry: Registry, config: PipelineConfig, data: DataVersion, run_id: str, trained_on: str | None
) -> bool:
    """Emit `deepgate.dataset.updated` for a data version neither the champion nor any earlier run has seen.

    Earlier runs count too: a retraining that this very event starts finds the version already
    recorded, so one new version is announced once, never in a loop.
    """
    if data.md5 == trained_on or registry.data_version_seen(config.name, data.md5, besides=run_id):
        return False
    emit_event(
        names.EVENT_DATASET_UPDATED,
        resource=names.pipeline_resource(config.name),
        payload={"md5": data.md5, "path": data.path, "size": data.size, "mlflow_run_id": run_id},
    )
    return True


@_task(name="reference_data")
def reference_data(settings: Settings, config: PipelineConfig, champion: VersionInfo | None) -> Dataset | None:
    """The champion's training data, read back from DVC by its version (None without a champion)."""
    if champion is None or names.TAG_DATA_VERSION not in champion.tags:
        return None
    filename = Path(champion.tags.get(names.TAG_DATA_PATH, "dataset.parquet")).name
    md5 = champion.tags[names.TAG_DATA_VERSION]
    return read_data_version(settings.home, md5, settings.dvc_remote, filename, config.data.target)


@_task(name="validate")
def validate(dataset: Dataset, config: PipelineConfig, suite: dict) -> GateReport:
    """Validate the dataset against the reference suite (Great Expectations)."""
    return validate_dataset(dataset, suite, config.data)


@_task(name="data_docs")
def data_docs(registry: Registry, run_id: str, dataset: Dataset, suite: dict) -> None:
    """Log Great Expectations' Data Docs of this validation to the run (validation/data_docs/)."""
    with tempfile.TemporaryDirectory() as tmp:
        registry.log_artifacts(run_id, data_docs_html(dataset, suite, Path(tmp) / "docs"), "validation/data_docs")


@_task(name="check_drift")
def drift(reference: Dataset | None, dataset: Dataset, config: PipelineConfig) -> GateReport:
    """Feature and label drift against the champion's data (not applicable without one)."""
    if reference is None:
        return GateReport(
            "drift", [Check("reference", True, "no champion yet: nothing to compare with")], applicable=False
        )
    return detect_drift(reference, dataset, config.data, config.gates.drift)


@_task(name="check_labels")
def check(dataset: Dataset, config: PipelineConfig) -> GateReport:
    """Label presence, domain, class counts and conflicting duplicates."""
    return check_labels(dataset, config.data, config.gates.labels)


@_task(name="split")
def split(dataset: Dataset, config: PipelineConfig) -> SplitIndices:
    """Stratified (or time-ordered) train/val/test split; few-shot limits the training rows."""
    indices = split_dataset(dataset, config.data, config.split)
    if config.data.shots_per_class is not None:
        indices = limit_shots(indices, dataset.labels, config.data.shots_per_class, seed=config.split.seed)
    return indices


@_task(name="check_label_noise")
def label_noise(dataset: Dataset, indices: SplitIndices, config: PipelineConfig) -> LabelNoiseReport:
    """Confident learning on the training and validation rows (out-of-fold probe model)."""
    rows = np.concatenate([indices.train, indices.val])
    gate = config.gates.labels
    return find_label_noise(dataset, config.data, rows=rows, folds=gate.noise_folds, seed=config.split.seed)


@_task(name="load_base_model")
def base_model(
    registry: Registry, config: PipelineConfig, champion: VersionInfo | None
) -> tuple[Predictor | None, str]:
    """The model training starts from (transfer: `train.base_model`; warm start: the champion)."""
    train_cfg = config.train
    if train_cfg.init == "warm_start" and champion is not None:
        return registry.load_predictor(f"models:/{names.registered_model_name(config.name)}/{champion.version}")
    if train_cfg.init == "transfer" and train_cfg.base_model is not None:
        return registry.load_predictor(train_cfg.base_model)
    return None, ""


@_task(name="train")
def train(
    dataset: Dataset,
    indices: SplitIndices,
    config: PipelineConfig,
    metadata: dict,
    base: Predictor | None,
    checkpoints: Path,
) -> modeling.Candidate:
    """Fit the network; one progress line per epoch."""
    logger = get_run_logger()

    def report(row: dict) -> None:
        logger.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  lr %.2e",
            row["epoch"] + 1,
            config.train.max_epochs,
            row["train_loss"],
            row["val_loss"],
            row["val_accuracy"],
            row["lr"],
        )

    candidate = modeling.fit_candidate(
        config, dataset, indices, metadata=metadata, on_epoch_end=report, base=base, checkpoint_dir=checkpoints
    )
    if candidate.result.resumed_from:
        logger.info("resumed from the checkpoint of an interrupted run: %s", candidate.result.resumed_from)
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: nothing left to resume
    return candidate


@_task(name="evaluate")
def evaluate(
    candidate: modeling.Candidate,
    dataset: Dataset,
    indices: SplitIndices,
    registry: Registry,
    config: PipelineConfig,
    champion: str | None,
    reference: tuple[Dataset, str] | None = None,
) -> modeling.Scoring:
    """Score the candidate and the current champion on the same test rows, overall and per slice.

    With `reference` (the champion's data and its version, when it differs from this run's),
    both are also scored on the champion's own test split, reported beside the gate.
    """
    champion_model, error = None, None
    if champion is not None:
        try:
            with registry.package(config.name, champion) as package:
                champion_model = modeling.load_predictor(package)
        except Exception as failure:  # an unreadable champion: the gate fails closed, says why
            error = f"champion v{champion} could not be loaded: {failure}"
    scoring = modeling.score_against(candidate.predictor, champion_model, dataset, indices.test, config)
    if error is not None:
        scoring.champion_error = error
    elif scoring.champion_error is not None:
        scoring.champion_error = f"champion v{champion}: {scoring.champion_error}"
    elif champion_model is not None and reference is not None:
        try:
            scoring.champion_split = modeling.score_on_champion_split(
                candidate.predictor, champion_model, reference[0], dataset, indices, config, reference[1]
            )
        except Exception as failure:  # information only: never blocks, but says why it is missing
            get_run_logger().warning("could not score the champion's own test split: %s", failure)
    return scoring


@_task(name="audit_bias")
def audit(
    candidate: modeling.Candidate,
    scoring: modeling.Scoring,
    dataset: Dataset,
    indices: SplitIndices,
    config: PipelineConfig,
) -> BiasReport:
    """Fairness of the candidate's test predictions across sensitive groups, and against the champion."""
    return audit_bias(**modeling.bias_inputs(candidate.predictor, scoring, dataset, indices, config))


@_task(name="explain")
def explain(
    candidate: modeling.Candidate, scoring: modeling.Scoring, dataset: Dataset, indices: SplitIndices, seed: int
) -> Explanation | None:
    """Permutation importance (tables) or integrated gradients (images) on the test rows."""
    inputs = modeling.model_inputs(dataset, indices.test)
    return explain_predictor(candidate.predictor, inputs, scoring.y_true, seed=seed)


@_task(name="model_card")
def model_card(registry: Registry, run_id: str, card: ModelCardInputs) -> str:
    """Log the candidate's model card on the MLflow run and link it from the Prefect run; returns the link."""
    registry.log_text(run_id, render_model_card(card), MODEL_CARD)
    link = registry.artifact_link(run_id, MODEL_CARD)
    version = f" v{card.version}" if card.version else ""
    create_link_artifact(
        link=link,
        link_text=f"model card: {card.pipeline}{version}",
        key=f"{config_key(card.pipeline)}-model-card",
        description="Data, labels, evaluation, slices, fairness, explanations, gates and the decision, on one page",
    )
    return link


@_task(name="register")
def register(
    registry: Registry,
    release: Release,
    run_id: str,
    candidate: modeling.Candidate,
    tags: dict[str, str],
    quantize_on: tuple[Dataset, np.ndarray] | None = None,
) -> str:
    """Log the model package (with model.onnx, and model.int8.onnx when asked) and register it as `challenger`."""
    with modeling.saved_package(candidate.predictor) as package:
        if quantize_on is not None:
            report = modeling.quantize(candidate.predictor, package, *quantize_on)
            registry.log_dict(run_id, report.to_dict(), "export/quantization.json")
            registry.log_metrics(run_id, {f"int8_{k}": v for k, v in report.to_dict().items() if k != "rows"})
        source = registry.log_model(run_id, package, modeling.pip_requirements())
    return release.register(source, run_id, tags)


@_task(name="validate_serving")
def validate_serving(
    registry: Registry,
    config: PipelineConfig,
    model_version: str,
    candidate: modeling.Candidate,
    dataset: Dataset,
    indices: SplitIndices,
) -> GateReport:
    """Serve the registered version in its own process; compare its answers and latency with the gate's."""
    with registry.package(config.name, model_version) as package:
        return modeling.check_serving(
            package, candidate.predictor, dataset, indices.test, config.name, model_version, config.gates.serving
        )


@_task(name="promote")
def promote(registry: Registry, release: Release, config: PipelineConfig, decision: PromotionDecision) -> str | None:
    """Record the verdict; move `champion` when the decision says so. Returns the champion."""
    verdict = names.VERDICT_PROMOTED if decision.promote else names.VERDICT_REJECTED
    release.tag({names.TAG_VERDICT: verdict, names.TAG_REASONS: " | ".join(decision.reasons)[:5000]})
    if decision.promote:
        release.promote(reason=" | ".join(decision.reasons))
        return release.version
    current = registry.alias_version(config.name, names.CHAMPION)
    return None if current is None else current.version


def _rejudge(
    registry: Registry,
    release: Release,
    run_id: str,
    summary: RunSummary,
    candidate: modeling.Candidate,
    dataset: Dataset,
    indices: SplitIndices,
    config: PipelineConfig,
) -> tuple[modeling.Scoring, dict[str, Figure], GateReport, GateReport]:
    """Evaluate and audit the candidate again, against `summary.champion` (the champion of now).

    The run's evaluation artifacts and plots are replaced, so that they show what was decided on.
    """
    scoring = evaluate(candidate, dataset, indices, registry, config, summary.champion)
    plots = log_evaluation(registry, run_id, scoring, modeling.positive_index(candidate.predictor))
    gate = evaluation_gate(scoring.comparison, config.gates.evaluation, scoring.champion_error)
    eval_gate = _gate(registry, run_id, summary, gate)
    bias = _gate(registry, run_id, summary, audit(candidate, scoring, dataset, indices, config))
    release.tag({f"{names.TAG_GATE_PREFIX}{g.gate}": g.status for g in (eval_gate, bias)})
    return scoring, plots, eval_gate, bias


@contextmanager
def _stage(summary: RunSummary, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        summary.timings[name] = round(time.perf_counter() - start, 3)


def _suite(
    settings: Settings, config: PipelineConfig, reference: Dataset | None, dataset: Dataset, summary: RunSummary
) -> dict:
    """The stored suite; without one, build it from the champion's data (else this data) and store it."""
    path = suite_path(settings.home, config.name)
    stored = load_suite(path)
    if stored is not None:
        return stored
    suite = build_suite(reference if reference is not None else dataset, config.data, config.gates.validation)
    save_suite(path, suite)
    summary.notes.append(
        f"wrote {path.relative_to(settings.home)} from the {'champion' if reference is not None else 'current'} "
        "data: review it, tighten it if you like, and commit it (later runs validate against it)"
    )
    return suite


class Approval(RunInput):
    """A person's answer to "make this version champion?" (the form in the Prefect UI)."""

    approver: str
    approve: bool
    comment: str = ""


def ask_approval(
    registry: Registry, release: Release, config: PipelineConfig, decision: PromotionDecision, run_id: str
) -> PromotionDecision:
    """Pause the flow until a person approves or rejects the promotion the gates allow."""
    settings = config.promote
    release.tag({names.TAG_VERDICT: names.VERDICT_AWAITING_APPROVAL})
    question = (
        f"**Make v{release.version} of {config.name} the champion?** The gates passed: "
        + " ".join(decision.reasons)
        + f"\n\nThe candidate's MLflow run: `{run_id}` (artifacts: `model_card.html`, `evaluation/`, `gates/`)."
        + f" Resume with `prefect flow-run resume` or in the UI; no answer in {settings.approval_timeout_s}s"
        " leaves the champion unchanged."
    )
    get_run_logger().info("waiting for approval of v%s (%ss at most)", release.version, settings.approval_timeout_s)
    try:
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(description=question, approver="", approve=False),
            timeout=settings.approval_timeout_s,
            poll_interval=settings.approval_poll_s,
            key=f"approve-{config.name}-v{release.version}",
        )
        given = None if answer is None else answer.model_dump(include={"approver", "approve", "comment"})
    except FlowPauseTimeout:
        given = None
    challenger = registry.alias_version(config.name, names.CHALLENGER)
    decision, tags = judge_approval(
        decision,
        given,
        str(release.version),
        None if challenger is None else challenger.version,
        settings.approval_timeout_s,
    )
    release.tag(tags)
    return decision


def log_evaluation(registry: Registry, run_id: str, scoring: modeling.Scoring, positive: int) -> dict[str, Figure]:
    """The evaluation's figures, reports and plots on the MLflow run; returns the plots by name."""
    comparison = scoring.comparison
    registry.log_metrics(run_id, {f"test.{k}": v for k, v in comparison.challenger.metrics().items()})
    if comparison.champion is not None:
        registry.log_metrics(run_id, {f"champion.{k}": v for k, v in comparison.champion.metrics().items()})
    registry.log_dict(run_id, comparison.challenger.to_dict(), "evaluation/report.json")
    registry.log_dict(run_id, comparison.to_dict(), "evaluation/comparison.json")
    registry.log_text(run_id, comparison.to_markdown(), "evaluation/comparison.md")
    if scoring.champion_split is not None:
        registry.log_dict(run_id, scoring.champion_split.to_dict(), "evaluation/champion_split.json")
        registry.log_text(run_id, scoring.champion_split.to_markdown(), "evaluation/champion_split.md")
    plots = {
        "confusion_matrix": plot_confusion_matrix(comparison.challenger),
        "reliability": plot_reliability(scoring.y_true, scoring.proba),
    }
    if scoring.proba.shape[1] == 2 and len(np.unique(scoring.y_true)) == 2:  # curves need both classes
        for plot, name in ((plot_roc_curve, "roc_curve"), (plot_pr_curve, "pr_curve")):
            plots[name] = plot(scoring.y_true, scoring.proba, positive=positive, champion_proba=scoring.champion_proba)
    for name, figure in plots.items():
        registry.log_figure(run_id, figure, f"plots/{name}.png")
    return plots


def log_explanation(registry: Registry, run_id: str, explanation: Explanation | None) -> Figure | None:
    """The explanation's figure (plots/explanations.png) and figures (explanations.json) on the MLflow run."""
    if explanation is None:
        return None
    figure = plot_explanation(explanation)
    registry.log_figure(run_id, figure, "plots/explanations.png")
    registry.log_dict(run_id, explanation.to_dict(), "explanations.json")
    return figure


def _gate(registry: Registry, run_id: str, summary: RunSummary, report: GateReport) -> GateReport:
    summary.add_gate(report)
    registry.log_dict(run_id, report.to_dict(), f"gates/{report.gate}.json")
    registry.log_metrics(run_id, {f"{report.gate}.{k}": v for k, v in report.figures.items()})
    create_markdown_artifact(
        key=f"{config_key(summary.pipeline)}-{report.gate.replace('_', '-')}",
        markdown=report.to_markdown(),
        description=f"{report.gate} gate",
    )
    return report


def config_key(pipeline: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in pipeline.lower())


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig, home: str | None = None, resume_from: str | None = None) -> RunSummary:
    """Retrain one pipeline through every gate.

    A retried flow run (`prefect flow-run retry`, or the flow's own retries) resumes its own
    failed attempt by itself; `resume_from` names another failed run to resume.

    Args:
        config: The validated pipeline configuration.
        home: Project workspace (default: `DEEPGATE_HOME` or the current directory).
        resume_from: A failed run of this pipeline (MLflow run id or Prefect flow-run id) whose
            expensive stages to reuse where their inputs are unchanged; gates run again.

    Returns:
        The run's summary (outcome `promoted`, `rejected` or `up_to_date`).

    Raises:
        GateStopped: A data or label gate failed; nothing was trained or registered.
        ResumeError: `resume_from` is unknown, of another pipeline, or did not fail.
    """
    settings = load_settings(Path(home) if home else None)
    registry = Registry(settings)
    summary = RunSummary(pipeline=config.name)
    code, commit = code_hash(), git_commit(settings.home)
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    summary.notes += crash_cleanup(registry, config.name, flow_run_id).notes()
    source = (
        resolve_resume(registry, config.name, resume_from)
        if resume_from
        else retried_source(registry, config.name, flow_run_id)
    )
    run_id = registry.start_run(
        config.name,
        f"retrain-{flow_run_id[:8]}",
        {
            names.TAG_PIPELINE: config.name,
            names.TAG_FLOW_RUN_ID: flow_run_id,
            names.TAG_CODE_HASH: code,
            names.TAG_GIT_COMMIT: commit,
            names.TAG_CONFIG_HASH: config.config_hash(),
            names.TAG_PROCESS: this_process().to_tag(),
            **({names.TAG_RESUMED_FROM_RUN: source.run_id} if source is not None else {}),
        },
    )
    summary.mlflow_run_id = run_id
    if source is not None:
        summary.resumed_from = source.describe()
    registry.log_params(run_id, config.model_dump(mode="json"))
    registry.log_dict(run_id, config.model_dump(mode="json"), names.CONFIG_ARTIFACT)  # for `deepgate promote`
    try:
        _retrain(config, settings, registry, summary, run_id, code, commit, flow_run_id, source)
    except GateStopped:
        registry.set_run_tags(run_id, {names.TAG_OUTCOME: "stopped", "deepgate.stopped_at": str(summary.stopped_at)})
        registry.log_dict(run_id, summary.to_dict(), "summary.json")
        registry.end_run(run_id, "FAILED")
        raise
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    registry.set_run_tags(run_id, {names.TAG_OUTCOME: summary.outcome})
    registry.log_dict(run_id, summary.to_dict(), "summary.json")
    registry.end_run(run_id, "FINISHED")
    create_markdown_artifact(
        key=f"{config_key(config.name)}-summary", markdown=summary.to_markdown(), description="deepgate retrain summary"
    )
    return summary


def _reusable(source: ResumeSource | None, stage: str, key: str) -> bool:
    return source is not None and source.key(stage) == key


def _reused(registry: Registry, run_id: str, summary: RunSummary, stage: str) -> None:
    summary.reused.append(stage)
    registry.set_run_tags(run_id, {names.TAG_REUSED: ",".join(summary.reused)})


def _stop(summary: RunSummary, report: GateReport) -> None:
    summary.outcome, summary.stopped_at = "stopped", report.gate
    summary.reasons = [c.detail for c in report.failures()]
    raise GateStopped(report, summary)


def _retrain(
    config: PipelineConfig,
    settings: Settings,
    registry: Registry,
    summary: RunSummary,
    run_id: str,
    code: str,
    commit: str,
    flow_run_id: str,
    source: ResumeSource | None = None,
) -> None:
    champion = registry.alias_version(config.name, names.CHAMPION)
    summary.champion = None if champion is None else champion.version
    with _stage(summary, "ingest"):
        raw = snapshot(config, settings)
        if raw is not None:
            registry.set_run_tags(run_id, {names.TAG_RAW_DATA_VERSION: raw.md5})
        try:
            dataset, path = ingest(config, settings)
        except DataLoadError as error:
            _stop(
                summary, _gate(registry, run_id, summary, GateReport("ingest", [Check("readable", False, str(error))]))
            )
    summary.rows = len(dataset)
    with _stage(summary, "version"):
        data = version(settings, path)
    summary.data_version = data.md5
    data_path = str(path.relative_to(settings.home))
    registry.set_run_tags(run_id, {names.TAG_DATA_VERSION: data.md5, names.TAG_DATA_PATH: data_path})
    announce(registry, config, data, run_id, None if champion is None else champion.tags.get(names.TAG_DATA_VERSION))

    with _stage(summary, "validate"):
        reference = reference_data(settings, config, champion)
        suite = _suite(settings, config, reference, dataset, summary)
        registry.log_dict(run_id, suite, SUITE_ARTIFACT)
        key = validation_key(data.md5, suite_hash(suite), config, code)
        registry.set_run_tags(
            run_id, {names.TAG_SUITE_HASH: suite_hash(suite), TAG_STAGE_KEY_PREFIX + STAGE_VALIDATE: key}
        )
        # Same data, suite, settings and code: GX would find the same; the verdict is judged again.
        reused = load_gate(registry, source.run_id, "validation") if _reusable(source, STAGE_VALIDATE, key) else None
        if reused is not None:
            _reused(registry, run_id, summary, STAGE_VALIDATE)
        report = _gate(registry, run_id, summary, reused or validate(dataset, config, suite))
    if not report.passed:
        data_docs(registry, run_id, dataset, suite)  # the page a person reads to see what broke
        _stop(summary, report)
    with _stage(summary, "check_drift"):
        report = _gate(registry, run_id, summary, drift(reference, dataset, config))
    if not report.passed:
        _stop(summary, report)
    with _stage(summary, "check_labels"):
        report = _gate(registry, run_id, summary, check(dataset, config))
    if not report.passed:
        _stop(summary, report)

    identity = fingerprint(data.md5, config.config_hash(), code)
    done = registry.find_by_fingerprint(config.name, identity)
    if done is not None:
        # Same data, code and config as an existing version: its verdict stands; training
        # again would only reproduce the same weights (training is deterministic).
        summary.outcome, summary.version = "up_to_date", done.version
        summary.reasons = [
            f"v{done.version} was trained on this data, code and config "
            f"(verdict: {done.tags.get(names.TAG_VERDICT, 'unknown')}); nothing to retrain"
        ]
        return

    with _stage(summary, "data_docs"):
        data_docs(registry, run_id, dataset, suite)
    with _stage(summary, "split"):
        indices = split(dataset, config)
    with _stage(summary, "check_label_noise"):
        noise = label_noise(dataset, indices, config)
        registry.log_text(run_id, noise.to_csv(), "labels/suspects.csv")
        report = noise.gate_report(config.gates.labels.max_noise_rate)
        report.checks.append(leakage(dataset, config.data, indices, config.gates.labels))
        report = _gate(registry, run_id, summary, report)
    if not report.passed:
        _stop(summary, report)
    quarantined = 0
    if config.gates.labels.quarantine:
        indices, quarantined = quarantine(indices, noise)
        summary.notes.append(f"quarantine: {quarantined} suspected mislabeled rows left out of training")
    registry.set_run_tags(run_id, {names.TAG_QUARANTINED: str(quarantined)})
    lineage = {
        "pipeline": config.name,
        "data_version": data.md5,
        "config_hash": config.config_hash(),
        "code_hash": code,
        "git_commit": commit,
    }
    base, base_ref = base_model(registry, config, champion)
    if base_ref:
        lineage["base_model"] = base_ref
        registry.set_run_tags(run_id, {names.TAG_BASE_MODEL: base_ref})
    elif config.train.init == "warm_start":
        summary.notes.append("warm_start: no champion yet, so this model starts from scratch")
    with _stage(summary, "train"):
        key = training_key(data.md5, config, code, base_ref)
        registry.set_run_tags(run_id, {TAG_STAGE_KEY_PREFIX + STAGE_TRAIN: key})
        reused_fit = reuse_training(registry, source) if _reusable(source, STAGE_TRAIN, key) else None
        if reused_fit is not None:
            candidate, trained_in = reused_fit, source.tags.get(names.TAG_TRAINED_IN, source.run_id)  # type: ignore[union-attr]
            _reused(registry, run_id, summary, STAGE_TRAIN)
        else:
            # Keyed by the run's fingerprint: a killed run of the same data, code and config resumes.
            checkpoints = settings.home / ".deepgate" / "checkpoints" / config.name / identity
            candidate, trained_in = train(dataset, indices, config, lineage, base, checkpoints), run_id
        keep_trained(registry, run_id, candidate)
    fit = candidate.result
    resumed = fit.resumed_from
    registry.set_run_tags(
        run_id,
        {
            names.TAG_TRAIN_DEVICE: f"{fit.device} x{fit.processes} ({fit.precision})",
            names.TAG_RESUMED_FROM: f"epoch {resumed['epoch']} step {resumed['step']}" if resumed else "-",
            names.TAG_TRAINED_IN: trained_in,
        },
    )
    if reused_fit is None:  # a reused model's fit is the failed run's record, not this run's
        registry.log_metrics(run_id, {"train.fit_seconds": fit.fit_seconds, "train.epochs_run": fit.epochs_run})
    for row in fit.history:
        registry.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    registry.log_figure(run_id, plot_learning_curves(candidate.result.history), "plots/learning_curves.png")

    with _stage(summary, "evaluate"):
        champion_data = None if champion is None else champion.tags.get(names.TAG_DATA_VERSION)
        older = (reference, champion_data) if reference is not None and champion_data not in (None, data.md5) else None
        scoring = evaluate(candidate, dataset, indices, registry, config, summary.champion, older)
        comparison = scoring.comparison
        report_eval, champion_eval = comparison.challenger, comparison.champion
        plots = log_evaluation(registry, run_id, scoring, modeling.positive_index(candidate.predictor))
        eval_gate = evaluation_gate(comparison, config.gates.evaluation, scoring.champion_error)
        _gate(registry, run_id, summary, eval_gate)
    summary.metrics = {k: v for k, v in report_eval.metrics().items() if v is not None}
    with _stage(summary, "audit_bias"):
        bias = _gate(registry, run_id, summary, audit(candidate, scoring, dataset, indices, config))
        fairness_plot = plot_group_rates(bias) if isinstance(bias, BiasReport) and bias.groups else None
        if fairness_plot is not None:
            registry.log_figure(run_id, fairness_plot, "plots/fairness_groups.png")
    with _stage(summary, "explain"):
        explanation = explain(candidate, scoring, dataset, indices, config.split.seed)
        explanation_plot = log_explanation(registry, run_id, explanation)

    tags = {
        names.TAG_PIPELINE: config.name,
        names.TAG_GIT_COMMIT: commit,
        names.TAG_CODE_HASH: code,
        names.TAG_DATA_VERSION: data.md5,
        names.TAG_DATA_PATH: data_path,
        names.TAG_SUITE_HASH: suite_hash(suite),
        **({names.TAG_RAW_DATA_VERSION: raw.md5} if raw is not None else {}),
        names.TAG_CONFIG_HASH: config.config_hash(),
        names.TAG_FINGERPRINT: identity,
        names.TAG_SEED: str(config.train.seed),
        names.TAG_QUARANTINED: str(quarantined),
        **({names.TAG_BASE_MODEL: base_ref} if base_ref else {}),
        names.TAG_FLOW_RUN_ID: flow_run_id,
        names.TAG_TRAINED_IN: trained_in,
        names.TAG_VERDICT: names.VERDICT_PENDING,
        **{f"{names.TAG_GATE_PREFIX}{g.gate}": g.status for g in summary.gates},
    }
    # One release: if any registry step below fails, the aliases go back to where they were
    # and the new version is tagged aborted with the reason.
    with Release(registry, config.name, by=f"flow run {flow_run_id}") as release:
        with _stage(summary, "register"):
            quantize_on = (dataset, indices.test) if config.export.quantize_int8 else None
            summary.version = register(registry, release, run_id, candidate, tags, quantize_on)
        with _stage(summary, "validate_serving"):
            serving = _gate(
                registry,
                run_id,
                summary,
                validate_serving(registry, config, summary.version, candidate, dataset, indices),
            )
            release.tag({f"{names.TAG_GATE_PREFIX}serving": serving.status})

        with _stage(summary, "promote"), promotion_lock(config.name):
            # Inside the lock: another run of this pipeline may have promoted while this one
            # trained, and the challenger must beat the champion of now, not the one it read.
            current = registry.alias_version(config.name, names.CHAMPION)
            if (None if current is None else current.version) != summary.champion:
                summary.notes.append(
                    f"champion moved from v{summary.champion} to "
                    f"v{None if current is None else current.version} during this run: judged against the new one"
                )
                summary.champion = None if current is None else current.version
                scoring, plots, eval_gate, bias = _rejudge(
                    registry, release, run_id, summary, candidate, dataset, indices, config
                )
                comparison = scoring.comparison
                report_eval, champion_eval = comparison.challenger, comparison.champion
            decision = decide_promotion(
                report_eval,
                champion_eval,
                [eval_gate, bias, serving],
                config.gates.evaluation,
                champion_version=summary.champion,
            )
            if decision.promote and config.promote.approval == "required":
                decision = ask_approval(registry, release, config, decision, run_id)
            registry.log_dict(run_id, decision.to_dict(), "promotion/decision.json")
            summary.champion = promote(registry, release, config, decision)
    summary.outcome = "promoted" if decision.promote else "rejected"
    summary.reasons = decision.reasons

    with _stage(summary, "model_card"):
        card = ModelCardInputs(
            pipeline=config.name,
            version=summary.version,
            lineage={
                **lineage,
                "data_path": data_path,
                "rows": str(len(dataset)),
                "mlflow_run_id": run_id,
                "flow_run_id": flow_run_id,
                **({"raw_data_version": raw.md5} if raw is not None else {}),
                **({"trained_in_run": trained_in} if trained_in != run_id else {}),
            },
            gates=summary.reports,
            comparison=comparison,
            decision=decision,
            bias=bias if isinstance(bias, BiasReport) else None,
            fairness_figure=fairness_plot,
            explanation=explanation,
            explanation_figure=explanation_plot,
            evaluation_figures=plots,
            description=config.description,
            notes=list(summary.notes),
        )
        summary.notes.append(f"model card: {model_card(registry, run_id, card)}")


def retrain_triggers(pipeline: str) -> list[DeploymentEventTrigger]:
    """Start a retraining when a new data version appears or monitoring finds drift, for this pipeline only.

    Both events name the pipeline as their resource (`names.pipeline_resource`), which is what
    the trigger matches; the run takes the deployment's own parameters (the validated config).
    """
    return [
        DeploymentEventTrigger(
            name=f"{pipeline}-retrain-on-new-data-or-drift",
            description=f"Retrain {pipeline} on {names.EVENT_DATASET_UPDATED} or {names.EVENT_DRIFT_DETECTED}.",
            expect={names.EVENT_DATASET_UPDATED, names.EVENT_DRIFT_DETECTED},
            match={"prefect.resource.id": names.pipeline_resource(pipeline)["prefect.resource.id"]},
            posture="Reactive",
            threshold=1,
        )
    ]


def deployments(configs: list[PipelineConfig], *, cron: str, home: str) -> list:
    """One `retrain` deployment per pipeline (`<pipeline>-nightly`): on the cron, and on its events.

    One run at a time per pipeline (`concurrency_limit=1`, later runs wait): a run started by
    an event while another is training then finds that run's model and skips in seconds.
    """
    return [
        pipeline_deployment(
            retrain,
            config,
            "nightly",
            cron=cron,
            home=home,
            description=f"Scheduled and event-triggered retraining of {config.name} through every gate.",
            triggers=retrain_triggers(config.name),
            concurrency_limit=1,
        )
        for config in configs
    ]


def pipeline_deployment(
    pipeline_flow: Any, config: PipelineConfig, suffix: str, *, cron: str, home: str, description: str, **extra: Any
) -> Any:
    """A deployment `<pipeline>-<suffix>` of a flow that takes `config` and `home`, on the cron."""
    return pipeline_flow.to_deployment(
        name=f"{config.name}-{suffix}",
        cron=cron,
        parameters={"config": config.model_dump(mode="json"), "home": home},
        tags=["deepgate", config.name],
        description=description,
        **extra,
    )
