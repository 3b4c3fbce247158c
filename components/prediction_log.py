"""A sample of what the service was asked and what it answered, in a local sqlite file.

The input for drift monitoring. Writing happens off the request path: a request only samples
and puts its rows on a bounded queue (never blocking); a background thread writes them in
batches. A full queue or a failing disk drops rows (counted), never fails or slows a request.
`close()` writes what is queued before returning.

Table `predictions`: id, ts (unix seconds), version, input (JSON: the row object, or the image
as a nested array), prediction (the label), probabilities (JSON list, in class order).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    version TEXT NOT NULL,
    input TEXT NOT NULL,
    prediction TEXT NOT NULL,
    probabilities TEXT NOT NULL
)
"""
INSERT = "INSERT INTO predictions (ts, version, input, prediction, probabilities) VALUES (?, ?, ?, ?, ?)"
_STOP = object()


class PredictionLog:
    """Sampled prediction logging to sqlite through a bounded queue and one writer thread.

    Args:
        path: The sqlite file (its folder is created).
        sample_rate: Fraction of inputs logged, in [0, 1].
        max_queued: Rows waiting to be written beyond which new ones are dropped.
        seed: Seeds the sampling (tests); None draws a fresh seed.
        on_drop: Called with the number of rows dropped; the service points it at its metrics.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: float,
        *,
        max_queued: int = 10_000,
        seed: int | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in [0, 1], got {sample_rate}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.written = 0
        self.dropped = 0
        self.on_drop = on_drop
        self._random = random.Random(seed)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(
        self, version: str, inputs: Sequence[Any] | np.ndarray, labels: Sequence[str], probabilities: np.ndarray
    ) -> None:
        """Queue a sample of one request's inputs and answers; returns at once, never raises."""
        try:
            now = time.time()
            for i in range(len(inputs)):
                if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
                    continue
                try:
                    self._queue.put_nowait((now, version, inputs[i], labels[i], probabilities[i]))
                except queue.Full:
                    self._drop(1)
        except Exception:  # logging must never fail a prediction
            log.exception("could not queue predictions for logging")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("prediction log: queue still full after %.0fs; stopping without flushing", timeout)
        self._thread.join(timeout)

    def _drop(self, n: int) -> None:
        self.dropped += n
        if self.on_drop is not None:
            self.on_drop(n)

    def _run(self) -> None:
        connection = self._connect()
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                while len(batch) < 1000:  # drain what is waiting: one transaction per batch
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(item is _STOP for item in batch)
                rows = [item for item in batch if item is not _STOP]
                if rows:
                    self._write(connection, rows)
        finally:
            if connection is not None:
                connection.close()

    def _connect(self) -> sqlite3.Connection | None:
        try:
            connection = sqlite3.connect(self.path)
            connection.execute("PRAGMA journal_mode=WAL")  # readers (a drift job) never block writes
            connection.execute(SCHEMA)
            connection.commit()
            return connection
        except Exception:  # keep draining the queue, dropping rows, so requests never notice
            log.exception("prediction log: cannot open %s; predictions will not be logged", self.path)
            return None

    def _write(self, connection: sqlite3.Connection | None, items: list[Any]) -> None:
        if connection is None:
            self._drop(len(items))
            return
        try:
            connection.executemany(INSERT, [_row(item) for item in items])
            connection.commit()
            self.written += len(items)
        except Exception:
            log.exception("prediction log: writing %d rows to %s failed", len(items), self.path)
            self._drop(len(items))


def _row(item: tuple[float, str, Any, str, np.ndarray]) -> tuple[float, str, str, str, str]:
    ts, version, value, label, probabilities = item
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return ts, version, json.dumps(value), label, json.dumps(np.asarray(probabilities).tolist())
