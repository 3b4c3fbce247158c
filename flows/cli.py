"""`deepgate`: the command line. Each command is wiring over flows/ and components/.

Exit codes of `deepgate run`: 0 the flow completed (challenger promoted, rejected, or already
up to date); 2 a data or label gate stopped the run before training; 1 an error.
`deepgate tune`: 0 the best values were written; 2 a data or label gate stopped the search;
1 an error, or no trial completed.
`deepgate monitor`: 0 stable (or too few logged rows, or no champion); 3 drift found; 1 an error.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from components import names
from components.settings import Settings, load_settings

# components.config (YAML + the pipeline models) is imported by the commands that read a
# pipeline, not here: it costs a quarter of a second that `deepgate serve` does not need.
if TYPE_CHECKING:
    from components.config import PipelineConfig

# `serve` writes the prediction log and `monitor` reads it: one option, one default, one variable.
PredictionLogOption = Annotated[
    Path | None,
    typer.Option(
        help="The sqlite file of logged predictions (default: .deepgate/predictions/PIPELINE.sqlite).",
        envvar="DEEPGATE_SERVE_PREDICTION_LOG",
    ),
]

app = typer.Typer(
    help="deepgate: gated retraining of deep-learning classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped or logged output (CI, `make run | tee`) is not a terminal: rich would assume 80 columns
# and squeeze the summary tables, so give such output a wider page.
console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)

EXIT_OK, EXIT_ERROR, EXIT_GATE = 0, 1, 2
EXIT_DRIFT = 3  # `deepgate monitor` found drift
_LOCAL_PREFECT = "http://127.0.0.1:4200/api"


def _prepare_environment(settings: Settings) -> None:
    """Settings that must be in place before prefect, GX or MLflow are imported."""
    os.environ.setdefault("PREFECT_HOME", str(settings.home / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Prefect's temporary server migrates a new database on its first start; on a busy
    # 2-core machine that can outlast Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Libraries' info chatter ("created temporary directory ...") drowns the progress lines.
    for noisy in ("great_expectations", "mlflow.store.db.utils", "dvc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if "PREFECT_API_URL" not in os.environ and _answers(f"{_LOCAL_PREFECT}/health"):
        # A local Prefect server is running: use it (runs show in its UI, and no temporary
        # server has to start, which costs several seconds).
        os.environ["PREFECT_API_URL"] = _LOCAL_PREFECT


def _answers(url: str) -> bool:
    try:
        import urllib.request  # here: http.client and email cost every command ~30 ms at start

        with urllib.request.urlopen(url, timeout=0.3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _configs(
    pipelines: list[str],
    config: Path | None,
    overrides: list[str],
    settings: Settings,
    override_files: list[Path] | None = None,
) -> list[PipelineConfig]:
    from components.config import ConfigError, load_pipeline

    files = list(override_files or [])
    if config is not None:
        if pipelines:
            raise ConfigError("give either pipeline names or --config, not both")
        return [load_pipeline(config_file=config, overrides=overrides, override_files=files)]
    if not pipelines:
        raise ConfigError("name a pipeline (or several, or --all), or pass --config FILE.yaml")
    return [
        load_pipeline(name, params_path=settings.params_path, overrides=overrides, override_files=files)
        for name in pipelines
    ]


_OverridesOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--overrides",
        help="A YAML file of values (dotted keys or a partial config), e.g. tuned/arrests.yaml from "
        "`deepgate tune`; applied before --set (repeatable).",
    ),
]


@app.command()
def run(
    pipelines: Annotated[
        list[str] | None, typer.Argument(help="Bundled pipelines to retrain (see params.yaml).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A pipeline YAML file instead.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override, e.g. train.max_epochs=5 (repeatable).")
    ] = None,
    overrides: _OverridesOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Every pipeline in params.yaml.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON.")] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="RUN",
            help="Resume this failed (or killed) run of the pipeline, by MLflow run id or Prefect flow-run id: "
            "its trained model and validation are reused where their inputs are unchanged; every gate runs again.",
        ),
    ] = None,
) -> None:
    """Retrain pipelines through every gate, and print what happened."""
    from components.config import ConfigError, bundled_pipelines

    settings = load_settings()
    try:
        names_ = sorted(bundled_pipelines(settings.params_path)) if all_ else list(pipelines or [])
        configs = _configs(names_, config, list(set_ or []), settings, overrides)
        if resume is not None and len(configs) != 1:
            raise ConfigError(f"--resume takes one pipeline, not {len(configs)}")
    except ConfigError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    _prepare_environment(settings)
    if resume is not None:
        _check_resume(settings, configs[0].name, resume)
    from flows.retrain import GateStopped, retrain

    summaries, codes = [], []
    for cfg in configs:
        state = retrain(cfg, home=str(settings.home), resume_from=resume, return_state=True)
        if state.is_completed():
            summaries.append(state.result())
            codes.append(EXIT_OK)
            continue
        error = state.result(raise_on_failure=False)
        if isinstance(error, GateStopped):
            summaries.append(error.summary)
            codes.append(EXIT_GATE)
        else:
            err.print(f"[red]error in pipeline {cfg.name}:[/red] {error}", highlight=False)
            codes.append(EXIT_ERROR)
    if as_json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))  # plain: rich would wrap long strings
    else:
        _print_summaries(summaries)
    raise typer.Exit(EXIT_ERROR if EXIT_ERROR in codes else max(codes, default=EXIT_OK))


def _check_resume(settings: Settings, pipeline: str, reference: str) -> None:
    """Fail fast, before Prefect starts, on a run that cannot be resumed (the flow checks again)."""
    from components.registry import Registry
    from components.resume import ResumeError, resolve_resume

    try:
        resolve_resume(Registry(settings), pipeline, reference)
    except ResumeError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None


def _print_summaries(summaries: list[Any]) -> None:
    if not summaries:
        return
    table = Table(title="deepgate: retraining summary", show_lines=False)
    for column in (
        "pipeline",
        "data version",
        "rows",
        "outcome",
        "accuracy",
        "macro-F1",
        "version",
        "champion",
        "time",
    ):
        table.add_column(column)
    style = {"promoted": "green", "up_to_date": "cyan", "rejected": "yellow", "stopped": "red"}
    for s in summaries:
        acc, f1 = s.metrics.get("accuracy"), s.metrics.get("macro_f1")
        table.add_row(
            s.pipeline,
            (s.data_version or "-")[:8],
            str(s.rows or "-"),
            f"[{style.get(s.outcome, 'white')}]{s.outcome}[/]",
            "-" if acc is None else f"{acc:.4f}",
            "-" if f1 is None else f"{f1:.4f}",
            f"v{s.version}" if s.version else "-",
            f"v{s.champion}" if s.champion else "none",
            f"{sum(s.timings.values()):.1f}s",
        )
    console.print(table)
    gates = Table(title="gates", show_lines=False)
    for column in ("pipeline", "gate", "verdict", "detail"):
        gates.add_column(column, overflow="fold")
    for s in summaries:
        for g in s.gates:
            colour = {"pass": "green", "fail": "red"}.get(g.status, "dim")
            gates.add_row(s.pipeline, g.gate, f"[{colour}]{g.status}[/]", g.headline)
    console.print(gates)
    for s in summaries:
        for reason in s.reasons:
            console.print(f"[bold]{s.pipeline}[/bold]: {reason}", highlight=False)
        if s.resumed_from:
            console.print(f"[bold]{s.pipeline}[/bold]: {s.resume_line()}", highlight=False)
        for note in s.notes:
            console.print(f"[bold]{s.pipeline}[/bold] note: {note}", highlight=False)
        if s.stopped_at:
            console.print(
                f"[red]{s.pipeline}: stopped at gate '{s.stopped_at}'; nothing was trained or "
                "registered, champion unchanged.[/red]",
                highlight=False,
            )


@app.command()
def tune(
    pipeline: Annotated[str | None, typer.Argument(help="A bundled pipeline (see params.yaml).")] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Trials to run (default: tune.trials).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the best values (default: tuned/PIPELINE.yaml).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A pipeline YAML file instead.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override, e.g. tune.max_epochs=5 (repeatable).")
    ] = None,
    overrides: _OverridesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Search hyperparameters with Optuna (scored on the validation split) and write the best as an override file."""
    from components.config import ConfigError

    settings = load_settings()
    try:
        [cfg] = _configs([pipeline] if pipeline else [], config, list(set_ or []), settings, overrides)
    except ConfigError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    _prepare_environment(settings)
    from flows.tune import TuneStopped, default_overrides_path
    from flows.tune import tune as tune_flow

    target = (out or default_overrides_path(settings.home, cfg.name)).resolve()
    state = tune_flow(cfg, trials=trials, out=str(target), home=str(settings.home), return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, TuneStopped):
            err.print(f"[red]{cfg.name}: {error}; no trial ran.[/red]", highlight=False)
            raise typer.Exit(EXIT_GATE)
        err.print(f"[red]error in pipeline {cfg.name}:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    summary = state.result()
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_tuning(summary, cfg, settings, config)
    raise typer.Exit(EXIT_OK if summary.overrides_path else EXIT_ERROR)


def _print_tuning(summary: Any, cfg: PipelineConfig, settings: Settings, config_file: Path | None) -> None:
    from components.tuning import format_value

    result = summary.result
    best, baseline = result.best, result.baseline
    keys = sorted({k for t in result.trials for k in t.params})
    better = "lower" if result.direction == "minimize" else "higher"
    table = Table(title=f"deepgate tune {cfg.name}: {result.metric} on the validation split ({better} is better)")
    for column in ("trial", "state", result.metric, "epochs", *(k.removeprefix("train.") for k in keys)):
        table.add_column(column)
    colour = {"complete": "white", "pruned": "yellow", "failed": "red"}
    for t in result.trials:
        is_best = best is not None and t.number == best.number
        state = f"[{'bold green' if is_best else colour[t.state]}]{t.state}{' (best)' if is_best else ''}[/]"
        table.add_row(
            str(t.number) + (" (baseline)" if t.baseline else ""),
            state,
            "-" if t.value is None else f"{t.value:.4f}",
            str(t.epochs),
            *(format_value(t.params.get(k)) for k in keys),
        )
    console.print(table)
    counts = result.counts()
    console.print(
        f"{len(result.trials)} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed; MLflow run {summary.mlflow_run_id} (experiment "
        f"{names.experiment_name(cfg.name)}), one nested run per trial",
        highlight=False,
    )
    for note in summary.to_dict()["notes"]:
        console.print(f"note: {note}", highlight=False)
    if best is None or summary.overrides_path is None:
        console.print(f"[red]{cfg.name}: no trial completed; nothing written.[/red]", highlight=False)
        return
    line = f"best: trial {best.number}, {result.metric} {best.value:.4f}"
    if baseline is not None and baseline.value is not None and baseline.number != best.number:
        line += f" (the current settings, trial {baseline.number}: {baseline.value:.4f})"
    elif baseline is not None and baseline.number == best.number:
        line += " - the current settings: no trial beat them"
    console.print(line, highlight=False)
    path = Path(summary.overrides_path)
    shown = path.relative_to(settings.home) if path.is_relative_to(settings.home) else path
    source = f"--config {config_file}" if config_file is not None else cfg.name
    console.print(f"wrote {shown}; retrain with it: deepgate run {source} --overrides {shown}", highlight=False)


@app.command()
def ingest(pipeline: Annotated[str, typer.Argument(help="A bundled pipeline (see params.yaml).")]) -> None:
    """Write the pipeline's canonical dataset under data/ (the `ingest` stage of dvc.yaml)."""
    from components.config import ConfigError, load_pipeline
    from components.dataset import DataLoadError
    from components.dataset import ingest as dataset_ingest

    settings = load_settings()
    try:
        config = load_pipeline(pipeline, params_path=settings.params_path)
        dataset, path = dataset_ingest(config.data, config.name, settings.data_dir)
    except (ConfigError, DataLoadError) as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    console.print(f"{pipeline}: {len(dataset)} rows -> {path.relative_to(settings.home)}", highlight=False)


@app.command()
def suite(
    pipeline: Annotated[str, typer.Argument(help="A bundled pipeline (see params.yaml).")],
    from_version: Annotated[
        str | None, typer.Option("--from-version", help="DVC md5 of the data to learn from (default: the champion's).")
    ] = None,
) -> None:
    """(Re)build the pipeline's expectation suite, expectations/PIPELINE.json, from reference data."""
    from components.config import ConfigError, load_pipeline

    settings = load_settings()
    _prepare_environment(settings)
    from components.dataset import DataLoadError, load_source
    from components.registry import Registry
    from components.suites import load_suite, save_suite, suite_path
    from components.validation import build_suite
    from components.versioning import read_data_version

    try:
        config = load_pipeline(pipeline, params_path=settings.params_path)
        champion = Registry(settings).alias_version(pipeline, names.CHAMPION)
        md5 = from_version or (champion.tags.get(names.TAG_DATA_VERSION) if champion else None)
        filename = "dataset.npz" if config.data.modality == "image" else "dataset.parquet"
        if md5:
            origin = f"data version {md5[:8]}" + ("" if from_version else f" (champion v{champion.version})")  # type: ignore[union-attr]
            dataset = read_data_version(settings.home, md5, settings.dvc_remote, filename, config.data.target)
        else:
            origin, dataset = "the current source (no champion yet)", load_source(config.data)
        path = suite_path(settings.home, pipeline)
        previous = load_suite(path)
    except (ConfigError, DataLoadError, FileNotFoundError, ValueError) as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    built = build_suite(dataset, config.data, config.gates.validation)
    save_suite(path, built)
    before = "" if previous is None else f" (was {len(previous['expectations'])})"
    console.print(
        f"wrote {path.relative_to(settings.home)}: {len(built['expectations'])} expectations{before}, "
        f"learnt from {origin}, {len(dataset)} rows. Review the diff and commit it.",
        highlight=False,
    )


@app.command()
def status(
    pipeline: Annotated[str | None, typer.Argument(help="One pipeline (default: every bundled one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Registered versions with aliases, key metrics, gate verdicts and data version."""
    from components.config import bundled_pipelines

    settings = load_settings()
    _prepare_environment(settings)
    from components.registry import Registry
    from components.release import champion_history

    registry = Registry(settings)
    pipelines = [pipeline] if pipeline else sorted(bundled_pipelines(settings.params_path))
    report: dict[str, dict[str, Any]] = {}
    for name in pipelines:
        rows = []
        for v in registry.versions(name):
            metrics = registry.client.get_run(v.run_id).data.metrics
            rows.append(
                {
                    "version": v.version,
                    "aliases": v.aliases,
                    "verdict": v.tags.get(names.TAG_VERDICT),
                    "data_version": v.tags.get(names.TAG_DATA_VERSION),
                    "accuracy": metrics.get("test.accuracy"),
                    "macro_f1": metrics.get("test.macro_f1"),
                    "gates": {
                        k.removeprefix(names.TAG_GATE_PREFIX): t
                        for k, t in v.tags.items()
                        if k.startswith(names.TAG_GATE_PREFIX)
                    },
                    "reasons": v.tags.get(names.TAG_REASONS, ""),
                }
            )
        history = [change.to_dict() for change in champion_history(registry, name)]
        report[name] = {"versions": rows, "champion_history": history}
    if as_json:
        print(json.dumps(report, indent=2))  # plain: rich would wrap long strings
        return
    for name, entry in report.items():
        rows = entry["versions"]
        table = Table(title=f"{name} ({names.registered_model_name(name)})")
        for column in ("version", "aliases", "verdict", "accuracy", "macro-F1", "data", "gates"):
            table.add_column(column, overflow="fold")
        for r in rows:
            table.add_row(
                f"v{r['version']}",
                ", ".join(r["aliases"]) or "-",
                r["verdict"] or "-",
                "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                "-" if r["macro_f1"] is None else f"{r['macro_f1']:.4f}",
                (r["data_version"] or "-")[:8],
                " ".join(f"{k}:{v}" for k, v in sorted(r["gates"].items())),
            )
        if not rows:
            table.add_row("-", "-", "no versions yet", "", "", "", "")
        console.print(table)
        if entry["champion_history"]:
            changes = Table(title=f"{name}: champion changes")
            for column in ("#", "when (UTC)", "kind", "champion", "by", "why"):
                changes.add_column(column, overflow="fold")
            for change in entry["champion_history"]:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(change["at_ms"] / 1000))
                before = f"v{change['previous']} -> " if change["previous"] else ""
                changes.add_row(
                    str(change["seq"]),
                    when,
                    change["kind"],
                    f"{before}v{change['version']}",
                    change["by"],
                    change["reason"][:300],
                )
            console.print(changes)


def _who() -> str:
    """The person at the keyboard, for the champion's history."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


@app.command()
def promote(
    pipeline: Annotated[str, typer.Argument(help="The pipeline.")],
    version: Annotated[str, typer.Argument(help="The registered version to make champion.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even if gates fail (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (required with --force; recorded).")] = None,
    by: Annotated[str | None, typer.Option(help="Who promotes (default: the current user).")] = None,
) -> None:
    """Make VERSION champion, after re-running the evaluation, bias and serving gates against the champion."""
    if force and not (reason and reason.strip()):
        err.print("[red]error:[/red] --force needs --reason TEXT (it is recorded in the champion's history)")
        raise typer.Exit(EXIT_ERROR)
    settings = load_settings()
    _prepare_environment(settings)
    from flows.promote import PromotionRefused, promote_version

    try:
        outcome = promote_version(
            pipeline, version, by=by or _who(), force_reason=reason if force else None, home=str(settings.home)
        )
    except PromotionRefused as error:
        err.print(f"[red]not promoted:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_GATE) from None
    before = f"v{outcome.previous}" if outcome.previous else "nobody"
    how = "FORCED past failing gates" if outcome.forced else "the gates passed"
    console.print(f"{pipeline}: v{outcome.version} is champion (was {before}); {how}", highlight=False)
    for line in outcome.reasons:
        console.print(f"  - {line}", highlight=False)


@app.command()
def rollback(
    pipeline: Annotated[str, typer.Argument(help="The pipeline.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the champion's history).")] = "rolled back by hand",
    by: Annotated[str | None, typer.Option(help="Who rolls back (default: the current user).")] = None,
) -> None:
    """Point champion back at the version it replaced (recorded; serving follows without restart)."""
    settings = load_settings()
    _prepare_environment(settings)
    from flows.promote import rollback as roll_back

    try:
        change = roll_back(pipeline, by or _who(), reason, home=str(settings.home))
    except ValueError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    console.print(f"{pipeline}: champion v{change.previous} -> v{change.version} (rollback)", highlight=False)


@app.command()
def serve(
    pipeline: Annotated[str, typer.Argument(help="The pipeline whose @champion to serve.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    poll: Annotated[
        float, typer.Option(help="Seconds between checks for a new champion.", envvar="DEEPGATE_SERVE_POLL")
    ] = 10.0,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes answering requests (each holds the model).", envvar="DEEPGATE_SERVE_WORKERS", min=1
        ),
    ] = 1,
    max_body_bytes: Annotated[
        int,
        typer.Option(help="Larger request bodies get 413, unread.", envvar="DEEPGATE_SERVE_MAX_BODY_BYTES", min=1),
    ] = 1_000_000,
    unknown_category: Annotated[
        str,
        typer.Option(
            help="A category not seen in training: ignore (scored as none known) or error (422).",
            envvar="DEEPGATE_SERVE_UNKNOWN_CATEGORY",
        ),
    ] = "ignore",
    log_predictions: Annotated[
        float,
        typer.Option(
            help="Fraction of inputs logged with their answers (0 = off), for drift monitoring.",
            envvar="DEEPGATE_SERVE_LOG_PREDICTIONS",
            min=0.0,
            max=1.0,
        ),
    ] = 0.0,
    prediction_log: PredictionLogOption = None,
) -> None:
    """Serve the pipeline's @champion over REST; follows alias moves without restart.

    This process is a small supervisor (it polls the registry and materialises the champion's
    package); `--workers` lean processes answer the requests (see components/serving_supervisor.py).
    """
    if unknown_category not in ("ignore", "error"):
        err.print(f"[red]error:[/red] --unknown-category must be ignore or error, not {unknown_category!r}")
        raise typer.Exit(EXIT_ERROR)
    settings = load_settings()
    from components.champion_lookup import FastRegistry, lookup_for
    from components.serving_state import listening_socket
    from components.serving_supervisor import ChampionCache, Supervisor, WorkerOptions, cache_root, champion_state

    try:  # bound here, before anything slow: a port in use fails at once, with its reason
        sock = listening_socket(host, port)
    except OSError as error:
        err.print(f"[red]error:[/red] cannot listen on {host}:{port}: {error.strerror or error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    log_path = None
    if log_predictions > 0:
        log_path = prediction_log or settings.home / ".deepgate" / "predictions" / f"{pipeline}.sqlite"
    options = WorkerOptions(pipeline, max_body_bytes, unknown_category, log_predictions, log_path)
    root = cache_root(settings.home, pipeline, settings.registry_uri)
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # a read-only workspace: a private cache, and no fast restart
        err.print(f"warning: {root} is not writable; caching the champion in a temporary folder", highlight=False)
        root = Path(tempfile.mkdtemp(prefix=f"deepgate-serve-{pipeline}-"))
    cache = ChampionCache(root)

    def connect() -> Any:
        _prepare_environment(settings)
        from components.registry import Registry

        return Registry(settings)

    # The registry is read without the MLflow client where it can be (sqlite, a tracking
    # server): milliseconds instead of seconds, so the workers start on the champion of now.
    registry = FastRegistry(lookup_for(settings.registry_uri), connect)
    fast = registry.fast is not None
    supervisor = Supervisor(sock, options, workers, cache, lambda: champion_state(registry, pipeline, cache))
    console.print(
        f"serving {pipeline}@champion on http://{host}:{port} with {workers} worker(s) (docs: /docs, metrics: "
        f"/metrics); checking for a new champion every {poll:g}s "
        + ("(registry read directly)" if fast else "(registry read through the MLflow client)")
        + (f"; logging {log_predictions:.0%} of inputs to {log_path}" if log_path is not None else ""),
        highlight=False,
    )
    # Otherwise MLflow is imported once the workers run: it costs seconds, they do not wait.
    code = supervisor.run(poll, before_first_check=None if fast else lambda: registry.client, check_first=fast)
    sock.close()
    if code != 0:
        raise typer.Exit(EXIT_ERROR)


@app.command()
def score(
    pipeline: Annotated[str, typer.Argument(help="The pipeline whose @champion scores the file.")],
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Rows to score: .csv, .parquet or .npz.")],
    output_path: Annotated[
        Path, typer.Argument(metavar="OUTPUT", help="Where to write predictions: .csv or .parquet.")
    ],
    version: Annotated[str | None, typer.Option("--version", help="Score with this version, not @champion.")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows read and scored at a time.")] = 50_000,
    id_column: Annotated[
        str | None, typer.Option("--id-column", help="A column copied to the output beside each prediction.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="torch threads (default: one per core); 1 is faster on a busy machine."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Score a file in chunks with @champion: label, class probabilities and model version per row."""
    from components.scoring import ScoringError, check_input, check_output

    try:  # cheap checks first: no Prefect or MLflow start-up for a typo
        check_input(input_path)
        check_output(output_path)
    except ScoringError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    settings = load_settings()
    _prepare_environment(settings)
    from flows.score import score_flow

    state = score_flow(
        pipeline,
        str(input_path),
        str(output_path),
        version=version,
        chunk_rows=chunk_rows,
        id_column=id_column,
        threads=threads,
        home=str(settings.home),
        return_state=True,
    )
    if not state.is_completed():
        err.print(f"[red]error:[/red] {state.result(raise_on_failure=False)}", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    summary = state.result()
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    figures = summary.to_dict()
    console.print(
        f"{pipeline}: scored {figures['rows']:,} rows in {figures['seconds']:.1f}s "
        f"({figures['rows_per_s']:,.0f} rows/s) with {summary.model_uri} -> {figures['output']}",
        highlight=False,
    )


@app.command("train-worker")
def train_worker(
    devices: Annotated[int, typer.Option(help="Processes (GPUs) on this machine, as node 0's train.devices.")] = 1,
    num_nodes: Annotated[int, typer.Option(help="Machines in all, node 0 included, as train.num_nodes.")] = 2,
    accelerator: Annotated[str, typer.Option(help="auto, cpu or gpu, as train.accelerator.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, 32-true or bf16-mixed, as train.precision.")] = "auto",
    once: Annotated[bool, typer.Option("--once", help="Leave after one fit.")] = False,
) -> None:
    """Lend this machine to multi-node training: wait for fits that node 0's flow launches.

    Needs MASTER_ADDR and MASTER_PORT (node 0's address and port) and NODE_RANK (1, 2, ...).
    """
    from components.training import serve_remote_fits

    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if not os.environ.get(name)]
    if missing:
        err.print(f"[red]error:[/red] train-worker needs {', '.join(missing)} set", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    console.print(
        f"node {os.environ['NODE_RANK']} of {num_nodes}: waiting for fits from "
        f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({devices} process(es) here)",
        highlight=False,
    )
    try:
        fits = serve_remote_fits(accelerator, devices, num_nodes, precision, once=once)
    except ValueError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    console.print(f"took part in {fits} fit(s)", highlight=False)


def champion_loader(registry: Any, pipeline: str, cache: Path) -> Any:
    """A loader for the serving app: the current @champion, in one process.

    The same steps as `deepgate serve`'s supervisor and workers (resolve, materialise into the
    cache, point a state file at it, load it lean), without the separate processes: for tests
    and for embedding the app in another ASGI server.
    """
    from components.serving_state import write_state
    from components.serving_supervisor import ChampionCache, champion_state
    from components.serving_worker import state_loader

    packages = ChampionCache(cache)
    state_file = cache / "state.json"
    follow = state_loader(state_file)

    def load() -> Any:
        state = champion_state(registry, pipeline, packages)
        if state is not None:
            write_state(state_file, state["version"], Path(state["package"]), state["info"])
        model = follow()
        if model is not None:  # loaded into memory: older packages' files are not needed
            packages.prune([model.version])
        return model

    return load


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000) -> None:
    """Start the MLflow UI on the embedded store, and say how to open the Prefect UI."""
    settings = load_settings()
    console.print(f"MLflow UI: http://127.0.0.1:{port}  (store: {settings.tracking_uri})", highlight=False)
    console.print(
        "Prefect UI: run `prefect server start` in another shell, then "
        "`export PREFECT_API_URL=http://127.0.0.1:4200/api`; deepgate also uses a local "
        "server on that port by itself when one is running.",
        highlight=False,
    )
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        settings.tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if settings.artifact_root:
        command += ["--default-artifact-root", settings.artifact_root]
    raise typer.Exit(subprocess.call(command))


@app.command()
def schedule(
    pipelines: Annotated[list[str] | None, typer.Argument(help="Pipelines to schedule (default: all).")] = None,
    cron: Annotated[str, typer.Option(help="Cron expression (default: nightly at 03:00).")] = "0 3 * * *",
    work_pool: Annotated[
        str | None,
        typer.Option(
            "--work-pool",
            help="Register the deployments on this Prefect work pool, for its workers to run, and return "
            "(instead of serving them from this process). Run it where the flows' code lives, e.g. in the image.",
        ),
    ] = None,
    monitor_cron: Annotated[
        str,
        typer.Option(
            help="Cron of the drift monitor of each pipeline (default: hourly); drift starts retraining. "
            "Empty: no monitor deployments."
        ),
    ] = "0 * * * *",
) -> None:
    """Serve Prefect deployments that retrain each pipeline on a cron schedule (or register them on a work pool).

    Each retraining deployment also starts on the events `deepgate.dataset.updated` and
    `deepgate.drift.detected` that name its pipeline; the monitor deployments emit the latter.
    """
    from components.config import ConfigError, bundled_pipelines, load_pipeline

    settings = load_settings()
    _prepare_environment(settings)
    from prefect import serve as prefect_serve

    from flows.monitor import monitor_deployments
    from flows.retrain import deployments

    try:
        chosen = [
            load_pipeline(name, params_path=settings.params_path)
            for name in (pipelines or sorted(bundled_pipelines(settings.params_path)))
        ]
    except ConfigError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    planned = deployments(chosen, cron=cron, home=str(settings.home))
    if monitor_cron:
        planned += monitor_deployments(chosen, cron=monitor_cron, home=str(settings.home))
    if work_pool:
        # The runs start in this process's working directory on the worker's side (the image's
        # /app): no code is uploaded; the work pool's job template chooses the image.
        for deployment in planned:
            deployment.apply(work_pool_name=work_pool)
        console.print(
            f"registered {len(planned)} deployment(s) on work pool '{work_pool}', cron '{cron}': "
            + ", ".join(f"{d.flow_name}/{d.name}" for d in planned),
            highlight=False,
        )
        return
    console.print(
        f"serving {len(planned)} deployment(s) on cron '{cron}': "
        + ", ".join(f"{d.flow_name}/{d.name}" for d in planned),
        highlight=False,
    )
    prefect_serve(*planned)


@app.command()
def monitor(
    pipeline: Annotated[str | None, typer.Argument(help="The bundled pipeline whose served model to check.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A pipeline YAML file instead.")] = None,
    prediction_log: PredictionLogOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare logged production inputs and predictions with the champion's training data.

    Exit 0 when stable (or too few rows, or no champion: the report says which), 3 when drift
    was found (the event `deepgate.drift.detected` then starts retraining where deployments are served).
    """
    from components.config import ConfigError

    settings = load_settings()
    try:
        [chosen] = _configs([pipeline] if pipeline else [], config, [], settings)
    except ConfigError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    _prepare_environment(settings)
    from flows.monitor import monitor as monitor_flow

    state = monitor_flow(
        chosen,
        home=str(settings.home),
        log_path=None if prediction_log is None else str(prediction_log),
        return_state=True,
    )
    if not state.is_completed():
        err.print(
            f"[red]error in pipeline {chosen.name}:[/red] {state.result(raise_on_failure=False)}", highlight=False
        )
        raise typer.Exit(EXIT_ERROR)
    report = state.result()
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(f"{chosen.name}: {report.verdict}: {report.headline()}", highlight=False)
    raise typer.Exit(EXIT_DRIFT if report.drifted else EXIT_OK)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
