"""Multi-layer perceptron for tabular data."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected network: [Linear -> ReLU -> Dropout] per hidden layer, then a linear head.

    Args:
        in_features: Width of the encoded input row.
        n_classes: Number of output logits.
        hidden: Widths of the hidden layers.
        dropout: Dropout probability after each hidden layer.
    """

    def __init__(self, in_features: int, n_classes: int, hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        # Kept apart from the body so that transfer learning can swap the head alone.
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of encoded rows (batch, in_features)."""
        return self.head(self.backbone(x))
