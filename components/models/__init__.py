"""Networks as plain `nn.Module`s (no Lightning import), and the one factory that builds them."""

from __future__ import annotations

from typing import Any

from torch import nn

from components.models.cnn import CNN
from components.models.mlp import MLP
from components.models.sequence import Conv1dClassifier, GRUClassifier

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "gru": GRUClassifier,
    "conv1d": Conv1dClassifier,
}


def build_model(arch: str, **params: Any) -> nn.Module:
    """Build a network by name.

    Args:
        arch: `mlp`, `cnn`, `gru` or `conv1d`.
        **params: The architecture's constructor arguments (see :class:`MLP`, :class:`CNN`,
            :class:`GRUClassifier`, :class:`Conv1dClassifier`).
            They are exactly what a model package stores as `arch_params`, so a saved model
            is rebuilt by the same call.
    """
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}") from None
    return cls(**params)


__all__ = ["ARCHITECTURES", "CNN", "MLP", "Conv1dClassifier", "GRUClassifier", "build_model"]
