"""Small models the core tests build themselves (no downloads, seconds to train)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class SmallResNet(nn.Module):
    """Stem, one residual block, a strided stage and a classifier: every group kind but depthwise."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv_a = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(width)
        self.conv_b = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(width)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.conv_c = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(x + self.bn_b(self.conv_b(y)))
        x = self.conv_c(self.down(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="session")
def digits16():
    from hadmc.data import load_data

    return load_data("digits", image_size=16, seed=0)


@pytest.fixture(scope="session")
def trained_small(digits16):
    """SmallResNet trained on 16x16 digits (about 97-99% test accuracy)."""
    from hadmc.training import evaluate_accuracy, train_classifier

    torch.manual_seed(0)
    model = SmallResNet(digits16.num_classes)
    train_classifier(model, digits16.loader("train", batch_size=64), epochs=4, lr=0.05, seed=0)
    acc = evaluate_accuracy(model.eval(), digits16.loader("test"))
    assert acc > 0.9, f"fixture model trained to only {acc:.3f}"
    return model.eval(), acc
