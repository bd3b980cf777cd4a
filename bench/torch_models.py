"""The benchmark's PyTorch twins of the Keras models (same layers, widths, BN, pooling, head).

PyTorch is an optional benchmark dependency (``pip install -e '.[bench]'``), never imported by the
``workbench`` package. Inputs are NCHW float32 in 0–255 (rescaled inside, as the Keras models do).
"""

from __future__ import annotations

import torch
from torch import nn

BN_MOMENTUM = 0.1  # PyTorch convention; Keras' 0.9 in workbench.models


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True)]


class Rescale(nn.Module):
    def forward(self, x):
        return x * (1.0 / 255)


class Head(nn.Module):
    def __init__(self, cin: int, num_classes: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.drop(x.mean(dim=(2, 3))))  # logits; softmax lives in the loss


def cnn(num_classes: int = 8, width: int = 16, dropout: float = 0.2, in_ch: int = 3) -> nn.Module:
    """workbench.models.build_cnn: 3 stages of two conv-BN-ReLU (w, 2w, 4w) + 2×2 max-pool."""
    mods, c = [Rescale()], in_ch
    for mult in (1, 2, 4):
        mods += conv_bn_relu(c, width * mult) + conv_bn_relu(width * mult, width * mult) + [nn.MaxPool2d(2)]
        c = width * mult
    return nn.Sequential(*mods, Head(c, num_classes, dropout))


def cnn_ref(num_classes: int = 8, in_ch: int = 3) -> nn.Module:
    """The issue's reference compact CNN: 4 conv-BN-ReLU (32, 64, 128, 256), 2×2 max-pool after the first 3."""
    mods, c = [Rescale()], in_ch
    for k, f in enumerate((32, 64, 128, 256)):
        mods += conv_bn_relu(c, f) + ([nn.MaxPool2d(2)] if k < 3 else [])
        c = f
    return nn.Sequential(*mods, Head(c, num_classes, 0.0))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(cin, cout, stride), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(cout, momentum=BN_MOMENTUM))
        self.proj = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout, momentum=BN_MOMENTUM))

    def forward(self, x):
        return torch.relu(self.body(x) + self.proj(x))


def resnet18(num_classes: int = 8, width: int = 64, in_ch: int = 3, stem_stride: int = 1) -> nn.Module:
    """workbench.models.build_resnet18 (MedMNIST style: 3×3 stem, no max-pool, blocks [2, 2, 2, 2])."""
    mods, c = [Rescale(), *conv_bn_relu(in_ch, width, stem_stride)], width
    for stage, mult in enumerate((1, 2, 4, 8), start=1):
        for block in range(2):
            mods.append(BasicBlock(c, width * mult, 2 if (stage > 1 and block == 0) else 1))
            c = width * mult
    return nn.Sequential(*mods, Head(c, num_classes, 0.0))


MODELS = {"cnn": cnn, "cnn_ref": cnn_ref, "resnet18": resnet18}
