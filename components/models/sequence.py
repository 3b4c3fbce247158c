"""Sequence classifiers: a stacked GRU and a dilated 1-D convolution, for inputs (batch, length, features).

Both end in a fixed-width summary of the whole sequence, so that one network accepts any
length, and keep the summary (`.backbone`) apart from the linear `.head` that transfer
learning swaps. Their constructor arguments mirror :class:`~components.models.mlp.MLP`
(`hidden`) and :class:`~components.models.cnn.CNN` (`channels`), so a pipeline's existing
`train.hidden` / `train.channels` settings carry over.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
from torch import nn


def _check_sequence_batch(x: torch.Tensor, in_features: int) -> None:
    # nn.GRU also accepts an unbatched (length, features) tensor and would read it silently
    # as one sequence: refuse anything but a batch of sequences, naming the expected shape.
    if x.dim() != 3 or x.shape[-1] != in_features:
        raise ValueError(f"expected a batch of sequences (batch, length, {in_features}), got {tuple(x.shape)}")


class _GRUStack(nn.Module):
    """GRU layers of possibly different widths; returns the last layer's final hidden state."""

    def __init__(self, in_features: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        # One nn.GRU per layer (not num_layers=) so that each layer may have its own width.
        self.layers = nn.ModuleList(nn.GRU(a, b, batch_first=True) for a, b in pairwise(widths))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x.new_empty(0)
        for index, gru in enumerate(self.layers):
            if index:
                x = self.dropout(x)  # between layers, as nn.GRU's own `dropout` does
            x, last = gru(x)
        return last[-1]


class GRUClassifier(nn.Module):
    """Stacked GRU read to the end of the sequence, then dropout and a linear head.

    Args:
        in_features: Features per time step.
        n_classes: Number of output logits.
        hidden: Width of each GRU layer, first to last.
        dropout: Dropout probability between GRU layers and before the head.
    """

    def __init__(self, in_features: int, n_classes: int, hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("gru: hidden needs at least one layer width")
        self.in_features = in_features
        self.backbone = nn.Sequential(_GRUStack(in_features, hidden, dropout), nn.Dropout(dropout))
        self.head = nn.Linear(hidden[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of sequences (batch, length, in_features)."""
        _check_sequence_batch(x, self.in_features)
        return self.head(self.backbone(x))


class _ChannelsFirst(nn.Module):
    """(batch, length, features) -> (batch, features, length), the layout nn.Conv1d expects."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class Conv1dClassifier(nn.Module):
    """[Conv1d -> BatchNorm -> ReLU] per block, pooled over time, then dropout and a linear head.

    Block `i` is dilated by ``2**i`` with "same" padding, so the receptive field doubles per
    block while the length is kept; the pooling over the whole sequence then makes the
    network indifferent to the length.

    Args:
        in_features: Features per time step.
        n_classes: Number of output logits.
        channels: Output channels of each conv block.
        dropout: Dropout probability before the head.
        kernel_size: Odd kernel width of every block.
        pool: `max` answers "did a pattern occur anywhere"; `avg` "how much of it was there".
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        channels: list[int],
        dropout: float = 0.0,
        kernel_size: int = 3,
        pool: Literal["max", "avg"] = "max",
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("conv1d: channels needs at least one block")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"conv1d: kernel_size must be odd (keeps the length), got {kernel_size}")
        if pool not in ("max", "avg"):
            raise ValueError(f"conv1d: pool must be 'max' or 'avg', got {pool!r}")
        self.in_features = in_features
        blocks: list[nn.Module] = [_ChannelsFirst()]
        current = in_features
        for index, out in enumerate(channels):
            dilation = 2**index
            padding = dilation * (kernel_size - 1) // 2
            blocks += [
                nn.Conv1d(current, out, kernel_size, padding=padding, dilation=dilation),
                nn.BatchNorm1d(out),
                nn.ReLU(),
            ]
            current = out
        pooling = nn.AdaptiveMaxPool1d(1) if pool == "max" else nn.AdaptiveAvgPool1d(1)
        self.backbone = nn.Sequential(*blocks, pooling, nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(current, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of sequences (batch, length, in_features)."""
        _check_sequence_batch(x, self.in_features)
        return self.head(self.backbone(x))
