"""The bias audit on arrests: how long it takes, and what it finds with and without mitigation.

Run (from the project root)::

    python benchmarks/bias_gate.py                 # the arrests pipeline as configured
    python benchmarks/bias_gate.py --epochs 5      # quicker fits, same audit

It trains the arrests MLP twice (train.seed 0 as the candidate, 1 as a stand-in champion) on
the pipeline's own split, then times `audit_bias` on the test rows (median of `--repeats`):
the candidate alone (2 sensitive columns + their intersection, 1,000 bootstrap resamples),
with the champion's predictions, and with the champion and the threshold optimizer (fitted on
the validation split). It prints the timings and the full report of the last configuration.
The decisions on synthetic data (10 data sets with an injected demographic-parity difference
of about 0.2, 10 below 0.05) are the acceptance test in tests/components/test_bias.py; run it
with `pytest tests/components/test_bias.py -k twenty -s` to see each case.

Last run (2 cores shared with other jobs, load average ~5; the pipeline's 30 epochs): 1,488
test rows (the latest years), groups colour (2), sex (2), colour x sex (4, Black & Female with
19 rows is too small to judge). Median audit, wall / CPU seconds: 0.15 / 0.10 alone, 0.19 / 0.12
with the champion's predictions, 0.41 / 0.20 with the champion and the threshold optimizer (wall
times move with the load: up to 0.44 s alone in earlier runs). The candidate passes (ratios
colour 0.835 [0.767, 0.904], sex 0.991, colour x sex 0.822 [0.743, 0.885]): on the point
estimate; the lower interval bounds of colour and the pair are below 0.8. The threshold
optimizer raises the ratios to 0.931 / 0.982 / 0.935 and lowers balanced accuracy 0.654 -> 0.623
(accuracy 0.718 -> 0.718).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components import modeling  # noqa: E402
from components.bias import MitigationData, audit_bias  # noqa: E402
from components.config import PipelineConfig, load_pipeline  # noqa: E402
from components.dataset import Dataset, load_source  # noqa: E402
from components.split import split_dataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="override train.max_epochs (default: the pipeline's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed audits per configuration")
    return parser.parse_args()


def positive_scores(predictor: object, dataset: Dataset, rows: np.ndarray, positive: int) -> np.ndarray:
    """The model's probability of the favourable class at `rows`."""
    proba = predictor.predict_proba(modeling.model_inputs(dataset, rows), strict=False)  # type: ignore[attr-defined]
    return proba[:, positive]


def timed(repeats: int, run) -> tuple[float, float, object]:
    """Median wall and CPU seconds of `run()` over `repeats` calls, and its last result.

    CPU seconds are this process's: on a shared machine they vary less than wall time.
    """
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def main() -> None:
    """Train, audit, print."""
    args = parse_args()
    warnings.filterwarnings("ignore")
    overrides = [f"train.max_epochs={args.epochs}"] if args.epochs else []
    config: PipelineConfig = load_pipeline("arrests", params_path=ROOT / "params.yaml", overrides=overrides)
    champion_config = config.model_copy(update={"train": config.train.model_copy(update={"seed": 1})})
    dataset = load_source(config.data)
    split = split_dataset(dataset, config.data, config.split)
    print(f"arrests: {len(split.train)} train, {len(split.val)} validation, {len(split.test)} test rows")
    start = time.perf_counter()
    candidate = modeling.fit_candidate(config, dataset, split).predictor
    champion = modeling.fit_candidate(champion_config, dataset, split).predictor
    print(f"two fits: {time.perf_counter() - start:.1f} s")

    y_true, y_pred, positive = modeling.binary_outcomes(candidate, dataset, split.test, config.data)
    _, champion_pred, _ = modeling.binary_outcomes(champion, dataset, split.test, config.data)
    sensitive = dataset.table.iloc[split.test][config.data.sensitive].reset_index(drop=True)
    mitigation = MitigationData(
        test_scores=positive_scores(candidate, dataset, split.test, positive),
        val_true=modeling.encode_labels(dataset, candidate.classes, split.val),
        val_scores=positive_scores(candidate, dataset, split.val, positive),
        val_sensitive=dataset.table.iloc[split.val][config.data.sensitive].reset_index(drop=True),
    )
    gate = config.gates.bias
    mitigated_gate = gate.model_copy(update={"mitigation": "threshold_optimizer"})
    runs = {
        "candidate alone": lambda: audit_bias(y_true, y_pred, sensitive, gate, positive, n_classes=2),
        "with champion": lambda: audit_bias(
            y_true, y_pred, sensitive, gate, positive, n_classes=2, champion_pred=champion_pred
        ),
        "with champion + threshold optimizer": lambda: audit_bias(
            y_true,
            y_pred,
            sensitive,
            mitigated_gate,
            positive,
            n_classes=2,
            champion_pred=champion_pred,
            mitigation=mitigation,
        ),
    }
    report = None
    for name, run in runs.items():
        wall, cpu, report = timed(args.repeats, run)
        print(f"audit, {name}: median {wall:.3f} s wall, {cpu:.3f} s CPU over {args.repeats}")
    print()
    print(report.to_markdown())  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
