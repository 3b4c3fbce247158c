"""The tiny user CSV pipeline ("toronto", on arrests rows) that the flow and CLI tests share."""

from __future__ import annotations

import copy
from typing import Any

_RAW: dict[str, Any] = {
    "name": "toronto",
    "data": {
        "source": "csv:incoming.csv",
        "target": "released",
        "sensitive": ["colour", "sex"],
        "positive_label": "Yes",
    },
    "train": {
        "arch": "mlp",
        "hidden": [16],
        "class_weight": "balanced",
        "max_epochs": 3,
        "batch_size": 64,
        "lr": 0.01,
        "seed": 0,
    },
    "gates": {
        "validation": {"min_rows": 100},
        # Arrests rows repeat by nature (five coarse features): without a time split most test
        # rows have a twin in training, which is not leakage of this pipeline's making.
        "labels": {"min_per_class": 10, "max_conflict_fraction": 0.5, "max_leakage_fraction": 1.0},
        "evaluation": {"min_accuracy": 0.6, "min_macro_f1": 0.3, "max_regression": 0.05},
        "bias": {"min_demographic_parity_ratio": 0.5, "min_group_size": 5},
    },
}


def toronto_raw(**changes: object) -> dict[str, Any]:
    """The pipeline as a raw mapping, with `section.key=value` changes (dotted names) applied."""
    raw = copy.deepcopy(_RAW)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return raw


# A second model of the same data must not be rejected for being a little worse than the
# first, overall, on a slice or in fairness: the tests that need one to replace the champion.
ANY_CHANGE = {
    "gates.evaluation.max_regression": 1.0,
    "gates.evaluation.max_slice_regression": 1.0,
    "gates.bias.max_fairness_regression": 1.0,
}
