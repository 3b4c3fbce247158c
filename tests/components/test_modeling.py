"""From split data to a packaged candidate: reproducible, and scored like it is served."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import ConfigError, build_config
from components.dataset import Dataset
from components.modeling import class_labels, fit_candidate, positive_class, predict_rows, score
from components.split import SplitIndices


def _data() -> tuple[Dataset, SplitIndices]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    table = pd.DataFrame({"x": x, "c": np.where(x > 0, "hi", "lo"), "y": np.where(x > 0, "yes", "no")})
    rows = np.arange(60)
    return Dataset("tabular", table, "y"), SplitIndices(rows[:40], rows[40:50], rows[50:])


def _config(seed: int = 0):
    return build_config(
        {
            "name": "tiny",
            "data": {"source": "csv:unused.csv", "target": "y"},
            "train": {"arch": "mlp", "hidden": [4], "max_epochs": 5, "lr": 0.05, "batch_size": 8, "seed": seed},
        }
    )


def _weights(seed: int) -> list[torch.Tensor]:
    dataset, split = _data()
    candidate = fit_candidate(_config(seed), dataset, split)
    return [t.clone() for t in candidate.predictor.net.state_dict().values()]


def test_same_seed_gives_the_same_weights_even_after_other_training_in_the_process() -> None:
    first = _weights(0)
    torch.rand(1000)  # disturb torch's global generator, as an earlier training would
    _weights(1)
    again = _weights(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, _weights(1), strict=True))


def test_candidate_learns_and_scores_on_the_test_rows() -> None:
    dataset, split = _data()
    candidate = fit_candidate(_config(), dataset, split)
    report = score(candidate.predictor, dataset, split.test)
    assert report.n == 10
    assert report.accuracy >= 0.9  # the label is a threshold on x: learnable in a few epochs
    assert candidate.predictor.classes == ["no", "yes"]


def test_predicted_rows_line_up_with_the_given_class_order() -> None:
    dataset, split = _data()
    predictor = fit_candidate(_config(), dataset, split).predictor
    y_true, proba = predict_rows(predictor, dataset, split.test)
    flipped_true, flipped = predict_rows(predictor, dataset, split.test, classes=["yes", "no"])
    assert np.allclose(flipped, proba[:, ::-1])
    assert (flipped_true == 1 - y_true).all()
    assert score(predictor, dataset, split.test).accuracy == pytest.approx((proba.argmax(1) == y_true).mean())
    with pytest.raises(ValueError, match="are not"):
        predict_rows(predictor, dataset, split.test, classes=["no", "maybe"])


def test_labels_sort_numerically_and_positive_class_defaults_to_the_last() -> None:
    digits = Dataset("tabular", pd.DataFrame({"y": [10, 2, 1, 2]}), "y")
    assert class_labels(digits) == ["1", "2", "10"]
    assert positive_class(["No", "Yes"], _config().data) == "Yes"
    assert positive_class(["a", "b", "c"], _config().data) is None


def _transfer_config(**train: object):
    return build_config(
        {
            "name": "tiny",
            "data": {"source": "csv:unused.csv", "target": "y"},
            "train": {
                "arch": "mlp",
                "hidden": [4],
                "max_epochs": 4,
                "lr": 0.05,
                "batch_size": 8,
                "seed": 0,
                "init": "transfer",
                "base_model": "unused",
                **train,
            },
        }
    )


def test_transfer_keeps_the_base_backbone_frozen_and_trains_a_new_head() -> None:
    dataset, split = _data()
    base = fit_candidate(_config(), dataset, split).predictor
    before = {k: v.clone() for k, v in base.net.backbone.state_dict().items()}

    transferred = fit_candidate(_transfer_config(unfreeze_after=None), dataset, split, base=base).predictor
    after = transferred.net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen throughout
    assert not torch.equal(transferred.net.head.weight, base.net.head.weight)
    assert transferred.preprocessor is base.preprocessor  # the backbone's own input scaling

    unfrozen = fit_candidate(_transfer_config(unfreeze_after=1), dataset, split, base=base).predictor
    assert not all(torch.equal(before[k], unfrozen.net.backbone.state_dict()[k]) for k in before)


def test_warm_start_needs_the_same_labels() -> None:
    dataset, split = _data()
    base = fit_candidate(_config(), dataset, split).predictor
    other = Dataset("tabular", dataset.table.assign(y=np.where(dataset.table["x"] > 0, "up", "down")), "y")
    warm = build_config(
        {
            "name": "tiny",
            "data": {"source": "csv:unused.csv", "target": "y"},
            "train": {"arch": "mlp", "hidden": [4], "max_epochs": 2, "init": "warm_start"},
        }
    )
    with pytest.raises(ValueError, match="label set"):
        fit_candidate(warm, other, split, base=base)
    assert fit_candidate(warm, dataset, split, base=base).predictor.classes == ["no", "yes"]


def test_transfer_without_a_base_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="base_model"):
        build_config({"name": "t", "data": {"source": "csv:x.csv"}, "train": {"arch": "mlp", "init": "transfer"}})
