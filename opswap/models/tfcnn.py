"""The Keras-style CNN of the dynamic-pruning study (seed 000): the TensorFlow CIFAR-10 tutorial net.

Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense10, 3x3 'valid' convolutions with ReLU,
2x2 max pooling; 122,570 parameters for 10 classes. Trained with Adam on inputs in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn


class TFCNN(nn.Module):
    """Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense(num_classes)."""

    def __init__(self, num_classes: int = 10, *, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 30 → 15
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),        # 13 → 6
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),                          # 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes),
        )
        # No residual blocks: nothing to substitute, but every layer can be made sparse.
        self.position_specs = ()
        self.input_size = (3, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
