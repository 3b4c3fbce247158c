"""The evaluation gate on arrests: how long it takes, and how it judges two equally good models.

Run (from the project root)::

    python benchmarks/evaluation_gate.py                         # the arrests pipeline as configured
    python benchmarks/evaluation_gate.py --epochs 5              # quicker fits, same evaluation
    python benchmarks/evaluation_gate.py --slices age employed   # add declared slice columns

It trains the arrests MLP twice (train.seed 0 as the candidate, 1 as a stand-in champion) on
the pipeline's own split, then times the evaluation of the test rows (median of `--repeats`):
slice labels, both models' metrics with 95% bootstrap intervals (1,000 resamples), McNemar and
the paired bootstrap difference, every slice group and pairwise intersection, and the gate. It
prints the timings, the gate and the comparison report. The two models differ only by their
seed, so every failed slice check here is noise: a measure of how strict the slice tolerance is.

Last run (2 cores shared with other jobs, load average ~4-6; the pipeline's 30 epochs): 1,488
test rows (the latest years). Sensitive columns only (colour, sex, colour x sex: 8 groups, 7
judged; Black & Female with 19 rows too small to judge): 0.150 s wall, 0.112 s CPU per
evaluation, and the seed-1 "champion" passes every check (accuracy +0.0094 [-0.0054, +0.0242],
McNemar mid-p 0.21). With `--slices age employed citizen checks` (153 groups, 121 judged):
0.450 s wall, 0.437 s CPU, and 15 of the 121 judged groups fail the default 0.05 slice
tolerance between the two seeds (mostly intersections with age; several with intervals that
exclude 0, so the two models really do differ there). Many declared slices make the gate strict.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components import modeling  # noqa: E402
from components.comparison import compare_models, slice_columns, slice_frame  # noqa: E402
from components.config import PipelineConfig, load_pipeline  # noqa: E402
from components.dataset import load_source  # noqa: E402
from components.promotion import evaluation_gate  # noqa: E402
from components.split import split_dataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="override train.max_epochs (default: the pipeline's)")
    parser.add_argument("--repeats", type=int, default=7, help="timed evaluations")
    parser.add_argument("--slices", nargs="*", default=[], help="declared slice columns (data.slices)")
    return parser.parse_args()


def main() -> None:
    """Train, evaluate, print."""
    args = parse_args()
    warnings.filterwarnings("ignore")
    overrides = [f"train.max_epochs={args.epochs}"] if args.epochs else []
    if args.slices:
        overrides.append(f"data.slices=[{', '.join(args.slices)}]")
    config: PipelineConfig = load_pipeline("arrests", params_path=ROOT / "params.yaml", overrides=overrides)
    champion_config = config.model_copy(update={"train": config.train.model_copy(update={"seed": 1})})
    dataset = load_source(config.data)
    split = split_dataset(dataset, config.data, config.split)
    print(f"arrests: {len(split.train)} train, {len(split.val)} validation, {len(split.test)} test rows")
    start = time.perf_counter()
    candidate = modeling.fit_candidate(config, dataset, split).predictor
    champion = modeling.fit_candidate(champion_config, dataset, split).predictor
    print(f"two fits: {time.perf_counter() - start:.1f} s")

    y_true, challenger_proba = modeling.predict_rows(candidate, dataset, split.test)
    _, champion_proba = modeling.predict_rows(champion, dataset, split.test, classes=candidate.classes)
    gate = config.gates.evaluation

    def evaluate():
        slices = slice_frame(dataset.table.iloc[split.test], slice_columns(config.data))
        report = compare_models(
            y_true,
            challenger_proba,
            champion_proba,
            candidate.classes,
            slices,
            positive=modeling.positive_index(candidate),
            min_slice_size=gate.min_slice_size,
            n_resamples=gate.n_bootstrap,
        )
        return report, evaluation_gate(report, gate)

    wall, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        report, verdict = evaluate()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    judged = sum(s.judged for s in report.slices)
    print(
        f"evaluation of {len(y_true)} rows, slice columns {slice_columns(config.data)}: {len(report.slices)} groups "
        f"({judged} judged): median {statistics.median(wall):.3f} s wall, {statistics.median(cpu):.3f} s CPU "
        f"over {args.repeats}"
    )
    print(f"gate: {verdict.headline()}")
    print()
    print(verdict.to_markdown())
    print()
    print(report.to_markdown())


if __name__ == "__main__":
    main()
