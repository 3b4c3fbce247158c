"""`score`: batch scoring as a flow. Wiring only; the streaming is components/scoring.py.

```
resolve (models:/deepgate-PIPELINE@champion, or a version) -> load the package (once)
   -> check the input's columns (header only) -> score the file chunk by chunk (progress lines)
   -> summary
```
The output is written to a temporary file and renamed at the end, so a failed run leaves
nothing behind; every row carries the model version that scored it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components import names
from components.predictor import Predictor
from components.registry import Registry
from components.scoring import (
    DEFAULT_CHUNK_ROWS,
    ScoreResult,
    ScoringError,
    check_input,
    check_output,
    missing_columns,
    missing_message,
    score_file,
)
from components.settings import load_settings

PROGRESS_EVERY_S = 5.0

_task = task(cache_policy=NO_CACHE, persist_result=False)


@dataclass(frozen=True)
class ScoreSummary:
    """What `deepgate score` reports."""

    pipeline: str
    model_uri: str
    input: str
    result: ScoreResult

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: rows, seconds, rows/s, output path and model version."""
        return {"pipeline": self.pipeline, "model_uri": self.model_uri, "input": self.input, **self.result.to_dict()}


@_task(name="resolve")
def resolve(registry: Registry, pipeline: str, version: str | None) -> str | None:
    """The exact version to score with: the one asked for, or the champion's (None: there is none)."""
    if version is not None:
        return str(version) if str(version) in {v.version for v in registry.versions(pipeline)} else None
    champion = registry.alias_version(pipeline, names.CHAMPION)
    return None if champion is None else champion.version


@_task(name="load_model")
def load_model(registry: Registry, pipeline: str, version: str) -> Predictor:
    """Download the version's package once and load it (weights in memory; the files go)."""
    with registry.package(pipeline, version) as package:
        return Predictor.load(package)


@_task(name="check_columns")
def check_columns(source: Path, predictor: Predictor, id_column: str | None) -> list[str]:
    """The columns the model (or --id-column) needs that the input lacks: read from its header only."""
    return missing_columns(source, predictor, id_column)


@_task(name="score_file")
def score(
    predictor: Predictor,
    input_path: Path,
    output_path: Path,
    version: str,
    model_uri: str,
    chunk_rows: int,
    id_column: str | None,
    threads: int | None,
) -> ScoreResult:
    """Stream the input through the model into the output, logging progress every few seconds."""
    logger = get_run_logger()
    if threads is not None:
        # For the whole process: torch's per-core worker threads spin, and on cores busy with
        # other work one thread is several times faster (see benchmarks/batch_scoring.py).
        torch.set_num_threads(threads)
    last = [time.monotonic()]

    def progress(rows: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            logger.info("scored %s rows", f"{rows:,}")

    return score_file(
        predictor,
        input_path,
        output_path,
        version,
        chunk_rows=chunk_rows,
        id_column=id_column,
        model_uri=model_uri,
        on_progress=progress,
    )


@flow(name="score")
def score_flow(
    pipeline: str,
    input_path: str,
    output_path: str,
    version: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    id_column: str | None = None,
    threads: int | None = None,
    home: str | None = None,
) -> ScoreSummary:
    """Score a CSV, Parquet or npz file with the pipeline's champion (or `version`).

    Raises:
        ScoringError: Bad input or output path, missing columns, no champion or no such version.
    """
    source, target = Path(input_path).resolve(), Path(output_path).resolve()
    check_input(source)  # before any download
    check_output(target)
    registry = Registry(load_settings(Path(home) if home else None))
    chosen = resolve(registry, pipeline, version)
    if chosen is None:  # refusals are raised here, by the flow, not inside a task: one clear failure
        name = names.registered_model_name(pipeline)
        raise ScoringError(
            f"{name} has no version {version}"
            if version is not None
            else f"{pipeline} has no champion yet: run `deepgate run {pipeline}` or pass --version"
        )
    model_uri = f"models:/{names.registered_model_name(pipeline)}/{chosen}"
    predictor = load_model(registry, pipeline, chosen)
    missing = check_columns(source, predictor, id_column)
    if missing:
        raise ScoringError(missing_message(source, missing))
    result = score(predictor, source, target, chosen, model_uri, chunk_rows, id_column, threads)
    get_run_logger().info(
        "%s: %s rows in %.1fs (%s rows/s) with %s -> %s",
        pipeline,
        f"{result.rows:,}",
        result.seconds,
        f"{result.rows_per_s:,.0f}",
        model_uri,
        result.output,
    )
    return ScoreSummary(pipeline, model_uri, str(source), result)
