"""Batch scoring of 1,000,000 tabular rows: rows/s and peak memory, for two chunk sizes.

Run (from the project root)::

    python benchmarks/batch_scoring.py                        # 1,000,000 rows, chunks of 10,000 and 100,000
    python benchmarks/batch_scoring.py --rows 200000 --chunk-rows 5000 50000 --json out.json

Everything happens in a temporary folder. The model is arrests-shaped: the pipeline's own
preprocessing (fitted on scikit-lego's real arrests rows) and its MLP (hidden [64, 32]),
trained for one epoch with a plain loop, saved as a model package. The input is synthetic:
each arrests column drawn independently from its real values, plus a `row_id`, written to
Parquet (or CSV) in row groups of 100,000.

Each chunk size is scored in a child process of its own (a fresh interpreter, started with
subprocess), so its peak resident memory (VmHWM from /proc/self/status) is that run's alone.
The child first loads the package, records its resident memory, then calls
`components.scoring.score_file` (Parquet in, Parquet out, the id copied through) and reports:
wall seconds, rows/s, peak RSS, and the growth of peak RSS over its resident memory before
scoring (what the chunks cost; it should not grow with the file).

Each run is repeated with torch's default intra-op threads (one per core) and with one thread:
on a machine whose cores are already busy, torch's spinning worker threads can make the same
forward pass tens of times slower (measured here, load 4.7 on 2 cores: 25 ms per 1,024 rows
with 2 threads, 0.4 ms with 1). The package also holds `model.onnx` (exported as registration
does), and each chunk size is scored once more with ONNX Runtime (`--backends torch onnx`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, installed or not

MIB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows to score")
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[10_000, 100_000], help="chunk sizes to compare")
    parser.add_argument("--input-format", choices=["parquet", "csv"], default="parquet")
    parser.add_argument(
        "--backends", nargs="+", choices=["torch", "onnx"], default=["torch", "onnx"], help="network runtimes"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        nargs="+",
        default=[0, 1],
        help="intra-op threads to compare (0: torch's default, one per core)",
    )
    parser.add_argument("--json", type=lambda p: Path(p).resolve(), help="also write the figures to this JSON file")
    parser.add_argument(
        "--child", nargs=6, metavar=("MODEL", "INPUT", "OUTPUT", "CHUNK", "THREADS", "BACKEND"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def build_model(directory: Path) -> Path:
    """An arrests MLP with the pipeline's preprocessing, trained one epoch, saved as a package."""
    import numpy as np
    import torch
    from sklego.datasets import load_arrests

    from components.config import DataConfig
    from components.dataset import feature_columns
    from components.features import TabularPreprocessor
    from components.models import build_model as build_net
    from components.onnx_export import export_onnx
    from components.predictor import Predictor

    torch.manual_seed(0)
    frame = load_arrests(as_frame=True)
    columns = feature_columns(DataConfig(source="sklego:arrests", target="released"), frame)
    prep = TabularPreprocessor.fit(frame, columns)
    params = {"in_features": prep.width, "n_classes": 2, "hidden": [64, 32], "dropout": 0.2}
    net = build_net("mlp", **params)
    x = torch.from_numpy(prep.transform(frame))
    y = torch.from_numpy((frame["released"] == "Yes").to_numpy().astype(np.int64))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.003)
    for batch in torch.randperm(len(x)).split(128):  # one epoch
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
        optimiser.step()
    predictor = Predictor(net, prep, ["No", "Yes"], "mlp", params, {"pipeline": "arrests"}, positive_class="Yes")
    path = predictor.save(directory)
    export_onnx(predictor, path)  # as registration does: model.onnx beside the weights
    return path


def write_rows(path: Path, rows: int, fmt: str, seed: int = 0) -> None:
    """`rows` arrests-like rows (each column drawn from its real values) and a row_id, in groups of 100,000."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklego.datasets import load_arrests

    real = load_arrests(as_frame=True).drop(columns=["released"])
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        columns = {c: rng.choice(real[c].to_numpy(), n) for c in real.columns}
        frame = pd.DataFrame({"row_id": np.arange(start, start + n), **columns})
        if fmt == "csv":
            frame.to_csv(path, mode="a" if start else "w", header=not start, index=False)
            continue
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def child(model: str, source: str, output: str, chunk_rows: int, threads: int, backend: str) -> dict[str, Any]:
    """One scoring run in this (fresh) process: its wall time and memory."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    from components.predictor import Predictor
    from components.scoring import score_file

    predictor = Predictor.load(model, backend=backend)  # type: ignore[arg-type]
    before_kib = status_kib("VmRSS")
    result = score_file(predictor, Path(source), Path(output), "1", chunk_rows=chunk_rows, id_column="row_id")
    peak_kib = status_kib("VmHWM")
    return {
        "chunk_rows": chunk_rows,
        "rows": result.rows,
        "seconds": result.seconds,
        "rows_per_s": result.rows_per_s,
        "rss_before_mib": before_kib / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "growth_mib": (peak_kib - before_kib) / 1024,
        "output_mib": Path(output).stat().st_size / MIB,
        "backend": backend,
        "threads": torch.get_num_threads() if backend == "torch" else "ORT default",
    }


def run_child(model: Path, source: Path, output: Path, chunk_rows: int, threads: int, backend: str) -> dict[str, Any]:
    """Score in a fresh interpreter and read its figures from its last output line."""
    command = [
        sys.executable,
        __file__,
        "--child",
        str(model),
        str(source),
        str(output),
        str(chunk_rows),
        str(threads),
        backend,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scoring with chunks of {chunk_rows} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    output.unlink()
    return figures


def print_table(runs: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """The figures as a rich table, and the machine line."""
    from rich.console import Console
    from rich.table import Column, Table

    console = Console(width=None if sys.stdout.isatty() else 130)
    table = Table(
        "backend",
        "threads",
        "chunk rows",
        *(Column(c, justify="right") for c in ("rows", "seconds", "rows/s", "RSS before MiB", "peak RSS MiB")),
        Column("growth MiB", justify="right"),
        title=f"batch scoring: {meta['rows']:,} synthetic arrests rows, {meta['input_format']} "
        f"({meta['input_mib']:.0f} MiB) -> Parquet",
    )
    for r in runs:
        table.add_row(
            r["backend"],
            str(r["threads"]),
            f"{r['chunk_rows']:,}",
            f"{r['rows']:,}",
            f"{r['seconds']:.1f}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['rss_before_mib']:.0f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['growth_mib']:.0f}",
        )
    console.print(table)
    console.print(
        f"machine: {meta['cpu_count']} cores, load average "
        f"{meta['load_average']} (at the end), {meta['platform']}; data and model built in {meta['setup_s']:.1f}s",
        highlight=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Build the model and the rows once, then score them once per chunk size."""
    args = parse_args(argv)
    if args.child:
        model, source, output, chunk, threads, backend = args.child
        print(json.dumps(child(model, source, output, int(chunk), int(threads), backend)))
        return 0
    with tempfile.TemporaryDirectory(prefix="deepgate-bench-score-") as tmp:
        start = time.perf_counter()
        model = build_model(Path(tmp) / "model")
        source = Path(tmp) / f"rows.{args.input_format}"
        write_rows(source, args.rows, args.input_format)
        setup_s = time.perf_counter() - start
        scored = Path(tmp) / "scored.parquet"
        plan = [("torch", t) for t in args.torch_threads if "torch" in args.backends]
        plan += [("onnx", 0)] if "onnx" in args.backends else []  # torch threads do not apply to ONNX Runtime
        runs = [run_child(model, source, scored, n, t, b) for b, t in plan for n in args.chunk_rows]
        meta = {
            "rows": args.rows,
            "input_format": args.input_format,
            "input_mib": source.stat().st_size / MIB,
            "setup_s": setup_s,
            "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": f"{platform.system()} {platform.machine()}",
        }
    print_table(runs, meta)
    if args.json:
        args.json.write_text(json.dumps({"machine": meta, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
