"""Batch scoring: a file of rows (or images) in, a file of predictions out, in bounded memory.

The input is read in chunks of `chunk_rows` and each chunk goes through the model package's own
preprocessing and network (:meth:`Predictor.predict_proba`), so memory stays flat however
large the file is. Inputs:

- CSV (`.csv`): pandas' chunked reader, only the model's columns (and the id column) parsed.
- Parquet (`.parquet`, `.pq`): pyarrow's `iter_batches`, only the needed columns read.
- npz (`.npz`): for an image model, the array `images` (n, h, w) or (n, c, h, w); for a
  tabular model, one 1-D array per feature column (named as the column, or `col__NAME` as
  deepgate's canonical files are). Each array is streamed out of the zip member chunk by chunk
  (stored or deflated alike), never loaded whole; strings must be fixed-width (no pickles).

Columns are checked before anything is written: a missing feature (or id) column raises
:class:`ScoringError` naming every missing one. Extra columns are ignored (the id column, if
asked for, is copied through). Values are not strict: a missing or unreadable value in a
numeric column is imputed with the training mean and an unknown category encodes as all
zeros, as the preprocessing does for offline callers; one bad cell never sinks a run of
millions of rows. Pass `strict=True` to refuse such rows instead.

Output (`.csv` or `.parquet`): the id column when asked for, `prediction` (the most probable
class), `proba_<class>` per class, and `model_version` on every row. It is written to a
temporary file beside OUTPUT and renamed at the end: a failed run leaves no output at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.lib import format as npy_format

from components.features import InputError
from components.predictor import Predictor

DEFAULT_CHUNK_ROWS = 50_000
INPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
IMAGES_ARRAY = "images"
PREDICTION = "prediction"
MODEL_VERSION = "model_version"
PROBA_PREFIX = "proba_"


class ScoringError(ValueError):
    """The input cannot be scored (missing file, unknown format, missing columns); says why."""


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring run did.

    Attributes:
        rows: Rows (or images) scored and written.
        seconds: Wall time of reading, scoring and writing.
        output: The file written.
        model_version: The version written beside each row.
        chunks: Chunks read.
    """

    rows: int
    seconds: float
    output: str
    model_version: str
    chunks: int

    @property
    def rows_per_s(self) -> float:
        """Throughput over the whole run."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures, throughput included."""
        return {**asdict(self), "rows_per_s": self.rows_per_s}


def file_format(path: Path, formats: dict[str, str], role: str) -> str:
    """`csv`, `parquet` or `npz` from a file's suffix.

    Raises:
        ScoringError: The suffix is not one of `formats`.
    """
    kind = formats.get(path.suffix.lower())
    if kind is None:
        raise ScoringError(
            f"unknown {role} format {path.suffix or '(no suffix)'!r} of {path}: use {', '.join(formats)}"
        )
    return kind


def check_input(path: Path) -> str:
    """The input's format, after checking that it is a readable file (before any model loads).

    Raises:
        ScoringError: Missing, not a file, or an unknown suffix.
    """
    kind = file_format(path, INPUT_FORMATS, "input")
    if not path.is_file():
        raise ScoringError(f"input file not found: {path}")
    return kind


def check_output(path: Path) -> str:
    """The output's format, after checking that its folder exists.

    Raises:
        ScoringError: Unknown suffix, or no such folder.
    """
    kind = file_format(path, OUTPUT_FORMATS, "output")
    if not path.parent.is_dir():
        raise ScoringError(f"output folder does not exist: {path.parent}")
    return kind


# ------------------------------------------------------------------------------ reading


def _needed_columns(predictor: Predictor, id_column: str | None) -> list[str]:
    columns = [] if predictor.modality == "image" else [c["name"] for c in predictor.input_schema()]
    return columns + ([id_column] if id_column and id_column not in columns else [])


def _npz_members(archive: zipfile.ZipFile) -> dict[str, str]:
    """Array name -> zip member; a canonical deepgate file names its table columns col__NAME."""
    members = {name.removesuffix(".npy"): name for name in archive.namelist()}
    members.update({key.removeprefix("col__"): name for key, name in list(members.items()) if key.startswith("col__")})
    return members


def _present_columns(path: Path, kind: str) -> list[str]:
    """The columns of a CSV header or a Parquet schema, or the arrays of an npz, read without the rows."""
    try:
        if kind == "csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        if kind == "parquet":
            return list(pq.read_schema(path).names)
        with zipfile.ZipFile(path) as archive:
            return list(_npz_members(archive))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ScoringError(f"{path} is not a readable CSV: {error}") from None
    except (pa.ArrowInvalid, OSError, zipfile.BadZipFile) as error:
        raise ScoringError(f"{path} is not a readable {kind} file: {error}") from None


def missing_columns(path: Path, predictor: Predictor, id_column: str | None = None) -> list[str]:
    """The columns (npz: arrays) that scoring needs and the file lacks, in the model's order; [] if none.

    Raises:
        ScoringError: The file is missing, unreadable, of an unknown format, or of a format the
            model's modality cannot read (images come only as .npz).
    """
    kind = check_input(path)
    if predictor.modality == "image" and kind != "npz":
        raise ScoringError(f"{path}: an image model scores .npz files (an 'images' array), not {kind}")
    needed = ([IMAGES_ARRAY] if predictor.modality == "image" else []) + _needed_columns(predictor, id_column)
    present = set(_present_columns(path, kind))
    return [c for c in needed if c not in present]


def _refuse_missing(path: Path, present: Sequence[str], needed: Sequence[str]) -> None:
    have = set(present)
    missing = [c for c in needed if c not in have]
    if missing:
        raise ScoringError(missing_message(path, missing))


def missing_message(path: Path, missing: Sequence[str]) -> str:
    """How a refusal for missing columns reads."""
    return f"{path} lacks the column(s) {', '.join(map(repr, missing))} that scoring needs"


def _csv_chunks(path: Path, needed: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    _refuse_missing(path, _present_columns(path, "csv"), needed)

    def chunks() -> Iterator[pd.DataFrame]:
        # usecols: only the model's columns are parsed; on_bad_lines: a ragged file fails.
        with pd.read_csv(path, usecols=needed, chunksize=chunk_rows, on_bad_lines="error") as reader:
            yield from reader

    return chunks()


def _parquet_chunks(path: Path, needed: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ScoringError(f"{path} is not a readable Parquet file: {error}") from None
    _refuse_missing(path, parquet.schema_arrow.names, needed)
    return (batch.to_pandas() for batch in parquet.iter_batches(batch_size=chunk_rows, columns=needed))


class _NpyStream:
    """Rows of one .npy member of an npz, read from the zip stream a chunk at a time."""

    def __init__(self, archive: zipfile.ZipFile, member: str) -> None:
        self.handle: IO[bytes] = archive.open(member)
        version = npy_format.read_magic(self.handle)
        read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ScoringError(f"array {member!r} has .npy format {version}, which cannot be streamed")
        shape, fortran, dtype = read_header(self.handle)
        if dtype.hasobject:
            raise ScoringError(f"array {member!r} holds Python objects (a pickle): save strings as fixed-width")
        if fortran and len(shape) > 1:
            raise ScoringError(f"array {member!r} is in Fortran order: save it C-ordered to stream it")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_items = int(np.prod(shape[1:], dtype=np.int64))

    def read(self, rows: int) -> np.ndarray:
        data = self.handle.read(rows * self.row_items * self.dtype.itemsize)
        count = len(data) // (self.row_items * self.dtype.itemsize or 1)
        return np.frombuffer(data, dtype=self.dtype, count=count * self.row_items).reshape((count, *self.shape[1:]))


def _npz_chunks(path: Path, predictor: Predictor, id_column: str | None, chunk_rows: int) -> Iterator[Any]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ScoringError(f"{path} is not a readable .npz file: {error}") from None
    members = _npz_members(archive)
    image = predictor.modality == "image"
    needed = ([IMAGES_ARRAY] if image else []) + _needed_columns(predictor, id_column)
    try:
        _refuse_missing(path, list(members), needed)
        streams = {column: _NpyStream(archive, members[column]) for column in needed}
    except BaseException:
        archive.close()
        raise
    lengths = {column: stream.shape[0] if stream.shape else 0 for column, stream in streams.items()}
    if len(set(lengths.values())) > 1 or any(
        not s.shape or (not image and len(s.shape) != 1) for s in streams.values()
    ):
        archive.close()
        shapes = {c: s.shape for c, s in streams.items()}
        raise ScoringError(f"{path}: arrays must be 1-D columns of one length (and 'images' (n, ...)); got {shapes}")

    def chunks() -> Iterator[Any]:
        with archive:
            while True:
                arrays = {column: stream.read(chunk_rows) for column, stream in streams.items()}
                n = len(next(iter(arrays.values())))
                if n == 0:
                    return
                if image:
                    ids = arrays.get(id_column) if id_column else None
                    yield arrays[IMAGES_ARRAY], (None if ids is None else pd.Series(ids, name=id_column))
                else:
                    yield pd.DataFrame(arrays)

    return chunks()


def read_chunks(path: Path, predictor: Predictor, id_column: str | None, chunk_rows: int) -> Iterator[Any]:
    """Chunks of the input, after checking that every needed column is there.

    Tabular models get DataFrames; image models get `(images, ids or None)` pairs.

    Raises:
        ScoringError: The file is missing, unreadable, of an unknown format, or lacks columns.
    """
    kind = check_input(path)
    if kind == "npz":
        return _npz_chunks(path, predictor, id_column, chunk_rows)
    if predictor.modality == "image":
        raise ScoringError(f"{path}: an image model scores .npz files (an 'images' array), not {kind}")
    needed = _needed_columns(predictor, id_column)
    return (_csv_chunks if kind == "csv" else _parquet_chunks)(path, needed, chunk_rows)


# ------------------------------------------------------------------------------ writing


def prediction_frame(
    predictor: Predictor, probabilities: np.ndarray, model_version: str, ids: pd.Series | None = None
) -> pd.DataFrame:
    """The output columns for one chunk: [id], prediction, proba_<class>..., model_version."""
    columns: dict[str, Any] = {}
    if ids is not None:
        columns[str(ids.name)] = ids.to_numpy()
    columns[PREDICTION] = np.asarray(predictor.classes, dtype=object)[probabilities.argmax(axis=1)]
    for i, label in enumerate(predictor.classes):
        columns[f"{PROBA_PREFIX}{label}"] = probabilities[:, i]
    columns[MODEL_VERSION] = np.full(len(probabilities), model_version, dtype=object)
    return pd.DataFrame(columns)


class _Writer:
    """Appends chunks to a CSV or a Parquet file."""

    def __init__(self, path: Path, kind: str, metadata: dict[str, str]) -> None:
        self.path, self.kind, self.metadata = path, kind, metadata
        self.parquet: pq.ParquetWriter | None = None
        self.started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "csv":
            frame.to_csv(self.path, mode="a" if self.started else "w", header=not self.started, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                schema = table.schema.with_metadata({**(table.schema.metadata or {}), **self.metadata})
                self.parquet = pq.ParquetWriter(self.path, schema)
            self.parquet.write_table(table.cast(self.parquet.schema))
        self.started = True

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        elif self.kind == "parquet" and not self.started:
            # No rows at all: still a valid (empty) file, but it has no schema to take from a chunk.
            pq.write_table(pa.table({}), self.path)
        elif self.kind == "csv" and not self.started:
            self.path.write_text("")


def _shift_rows(message: str, offset: int) -> str:
    """An InputError message with its (chunk-relative) row number made a row number of the file."""
    return re.sub(r"\brow (\d+)", lambda match: f"row {offset + int(match.group(1))}", message, count=1)


def score_file(
    predictor: Predictor,
    input_path: Path,
    output_path: Path,
    model_version: str,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    id_column: str | None = None,
    strict: bool = False,
    model_uri: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ScoreResult:
    """Score every row of `input_path` and write the predictions to `output_path`.

    Args:
        predictor: The model package.
        input_path: A .csv, .parquet/.pq or .npz file (see the module docstring).
        output_path: A .csv or .parquet/.pq file; replaced only when the run succeeds.
        model_version: Written beside every row (the registry version, say).
        chunk_rows: Rows read, scored and written at a time: memory grows with it, not the file.
        id_column: A column copied through to the output, to join predictions back.
        strict: Refuse bad values (non-numeric text, NaN) instead of imputing them.
        model_uri: Recorded in the Parquet file's metadata (`deepgate.model`).
        on_progress: Called with the rows done so far after each chunk.

    Returns:
        Rows, seconds and the output path.

    Raises:
        ScoringError: Bad input file or missing columns (raised before any output exists), or
            a value refused under `strict` (the partial output is removed).
    """
    if chunk_rows < 1:
        raise ScoringError(f"chunk_rows must be at least 1, got {chunk_rows}")
    start = time.perf_counter()
    kind = check_output(output_path)
    chunks = read_chunks(input_path, predictor, id_column, chunk_rows)
    metadata = {"deepgate.model_version": model_version, "deepgate.model": model_uri or ""}
    # Same folder, so the final rename is atomic; hidden, so nobody picks up a partial file.
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    writer = _Writer(tmp, kind, metadata)
    rows = count = 0
    try:
        for chunk in chunks:
            if predictor.modality == "image":
                images, ids = chunk
            else:
                images, ids = chunk, (chunk[id_column] if id_column else None)
            try:
                probabilities = predictor.predict_proba(images, strict=strict)
            except InputError as error:  # its row numbers count from the chunk's first row
                raise ScoringError(f"{input_path}: {_shift_rows(str(error), rows)}") from None
            writer.write(prediction_frame(predictor, probabilities, model_version, ids))
            rows, count = rows + len(probabilities), count + 1
            if on_progress is not None:
                on_progress(rows)
        writer.close()
        tmp.replace(output_path)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        with contextlib.suppress(Exception):
            chunks.close()  # type: ignore[attr-defined]  # generators: release the input file
    return ScoreResult(rows, time.perf_counter() - start, str(output_path), model_version, count)
