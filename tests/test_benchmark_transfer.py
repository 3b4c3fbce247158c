"""The transfer showcase: a fair scratch baseline in params.yaml, and benchmarks/transfer.py's arithmetic.

The benchmark's full run (a base through the flow, then 2 x shots x seeds fits) takes minutes on
the shared 2-core machine, too long for `make test`; it is run by hand (benchmarks/README.md).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from scripts import load_script

from components.config import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"


@pytest.fixture(scope="module")
def transfer_bench() -> ModuleType:
    return load_script("benchmarks/transfer.py", "transfer_bench")


def test_scratch_trains_the_network_that_transfer_starts_from() -> None:
    # Transfer takes the base's network; `--set train.init=scratch` builds the pipeline's own.
    # Were they to differ, the comparison would measure the network size, not the init.
    base = load_pipeline("mnist-base", params_path=PARAMS).train
    scratch = load_pipeline("mnist-transfer", params_path=PARAMS, overrides=["train.init=scratch"]).train
    assert scratch.init == "scratch"
    assert (scratch.arch, scratch.channels, scratch.dropout) == (base.arch, base.channels, base.dropout)


def test_summary_per_shots(transfer_bench: ModuleType) -> None:
    def row(shots: int, seed: int, transfer: float, scratch: float) -> dict:
        accuracy = {"transfer": {"accuracy": transfer}, "scratch": {"accuracy": scratch}}
        return {"shots": shots, "seed": seed, **accuracy, "difference": transfer - scratch}

    rows = [row(10, 0, 0.95, 0.90), row(10, 1, 0.93, 0.94), row(10, 2, 0.97, 0.92), row(50, 0, 0.96, 0.96)]
    ten, fifty = transfer_bench.summarise(rows)
    assert (ten["shots"], ten["seeds"], fifty["seeds"]) == (10, 3, 1)
    assert ten["transfer"]["mean"] == pytest.approx(0.95)
    assert ten["transfer"]["sd"] == pytest.approx(0.02)  # sample standard deviation
    assert ten["difference"]["mean"] == pytest.approx(0.03)
    assert ten["min_difference"] == pytest.approx(-0.01)
    assert ten["transfer_wins"] == 2  # a tie or a loss is not a win
    assert fifty["difference"] == {"mean": 0.0, "sd": 0.0} and fifty["transfer_wins"] == 0
