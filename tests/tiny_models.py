"""The small CNN the training tests train, and a history without its timing columns."""
import torch
from torch import nn

TIMING = ("seconds", "images_per_s")


def tiny(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Two strided conv-BN-ReLU layers and a linear head: trains in milliseconds, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def untimed(history):
    """Per-epoch rows without wall-clock figures (those differ between equal runs)."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]
