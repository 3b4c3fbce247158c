"""Small convolutional network for images."""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    """[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] per block, then dropout and a linear head.

    Args:
        in_channels: Channels of the input images (1 for greyscale).
        height: Input height in pixels.
        width: Input width in pixels.
        n_classes: Number of output logits.
        channels: Output channels of each conv block; each block halves height and width.
        dropout: Dropout probability before the head.
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        n_classes: int,
        channels: list[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        current = in_channels
        for out in channels:
            blocks += [
                nn.Conv2d(current, out, kernel_size=3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            current = out
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError("cnn: too many conv blocks for the image size")
        self.backbone = nn.Sequential(*blocks, nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(current * height * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images (batch, channels, height, width)."""
        return self.head(self.backbone(x))
