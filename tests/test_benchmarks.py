"""benchmarks/gpu_train.py without a GPU: its measurements' arithmetic and its refusal message.

The script's full run is smoke-tested by hand (`--device cpu --quick`): on the shared 2-core
machine it takes 20-30 s, too long for `make test`.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpu_train() -> ModuleType:
    return load_script("benchmarks/gpu_train.py", "gpu_train")


def test_steady_epochs_and_time_to_target(gpu_train: ModuleType) -> None:
    history = [{"val_accuracy": a} for a in (0.90, 0.965, 0.97, 0.98)]
    fit = gpu_train.Fit("plain loop 32-true", "target", 256, 3500, "32-true", "cpu", 4.5, [1.5, 2.5, 3.5, 4.5], history)
    assert fit.epoch_s == [1.0, 1.0, 1.0]  # the first epoch (warm-up, set-up) is left out
    assert fit.reached(0.97) == (3.5, 3)  # the first epoch at or above the target, from the call
    assert fit.reached(0.99) is None


def test_tiling_repeats_rows_for_throughput_only(gpu_train: ModuleType) -> None:
    inputs, labels = np.arange(6, dtype=np.float32).reshape(3, 1, 1, 2), np.array([0, 1, 2])
    tiled_inputs, tiled_labels = gpu_train.tile((inputs, labels), 2)
    assert tiled_inputs.shape == (6, 1, 1, 2) and tiled_labels.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_refuses_cuda_without_a_gpu(gpu_train: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "gpu_train.json"
    assert gpu_train.main(["--device", "cuda", "--json", str(out)]) == 2
    assert "CUDA is not available" in json.loads(out.read_text())["error"]
