"""Wide Residual Networks (Zagoruyko & Komodakis, BMVC 2016), pre-activation, as in their code.

depth = 6n + 4; a 3x3 stem conv 3→16; three stages of n blocks with 16k, 32k, 64k channels and
strides 1, 2, 2; head BN-ReLU-global average pool-Linear. Convolutions have no bias. The 3n
blocks are the network's numbered *positions* (1-based, forward order), the places where
opswap swaps in candidate operations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class WRNBlock(nn.Module):
    """Pre-activation basic block: o = relu(bn1(x)); conv3x3(o) → bn-relu → conv3x3, + shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, *, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.drop_rate = drop_rate
        # The projection shortcut sees the pre-activated input, as in the official code.
        has_skip = c_in == c_out and stride == 1
        self.shortcut = None if has_skip else conv1x1(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x), inplace=True)
        y = F.relu(self.bn2(self.conv1(o)), inplace=True)
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


@dataclass(frozen=True)
class PositionSpec:
    """Where a block sits and the shape contract any operation placed there must meet."""

    index: int
    path: str
    c_in: int
    c_out: int
    stride: int


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 inputs."""

    def __init__(self, depth: int = 40, widen: int = 2, num_classes: int = 10, *,
                 drop_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen < 1:
            raise ValueError(f"WRN widen factor must be >= 1, got {widen}")
        n = (depth - 4) // 6
        self.depth, self.widen, self.num_classes = depth, widen, num_classes
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = conv3x3(in_chans, widths[0])
        specs, stages = [], []
        c_in = widths[0]
        for s, (c_out, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = []
            for i in range(n):
                st = stride if i == 0 else 1
                blocks.append(WRNBlock(c_in, c_out, st, drop_rate=drop_rate))
                specs.append(PositionSpec(len(specs) + 1, f"stages.{s}.{i}", c_in, c_out, st))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        self.position_specs: tuple[PositionSpec, ...] = tuple(specs)
        self.input_size = (3, 32, 32)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.stages(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(x.mean((2, 3)))  # global average pool (vmap-friendly in channels_last)
