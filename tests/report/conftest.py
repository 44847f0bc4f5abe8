import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # report_fixtures (importlib import mode)
sys.path.insert(0, str(Path(__file__).parent.parent / "search"))  # search_fixtures: surrogate runs

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits16_data():
    from hadmc.data import load_data

    return load_data("digits", image_size=16, seed=0)


@pytest.fixture(scope="session")
def trained_small_model(digits16_data):
    """A two-conv CNN trained briefly on 16x16 digits (a real model for a real run in seconds)."""
    import torch
    from torch import nn

    from hadmc.training import evaluate_accuracy, train_classifier

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, digits16_data.num_classes),
    )  # fmt: skip
    train_classifier(model, digits16_data.loader("train", batch_size=64), epochs=3, lr=0.05, seed=0)
    return model.eval(), evaluate_accuracy(model.eval(), digits16_data.loader("test"))
