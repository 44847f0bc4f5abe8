"""The shared training loop: KD loss against a hand computation, real learning, frozen scopes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hadmc.data import load_data
from hadmc.errors import ConfigError
from hadmc.training import distillation_loss, evaluate_accuracy, train_classifier


def _tiny_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


@pytest.fixture(scope="module")
def digits16():
    return load_data("digits", image_size=16)


def test_distillation_loss_equals_hand_computation():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([[1.0, 1.5, 0.0], [3.0, -1.0, 0.5]])
    y = torch.tensor([0, 2])
    T, alpha = 2.0, 0.3

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(row)[label]) for row, label in zip(s.tolist(), y.tolist())) / 2
    kl = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps, pt = softmax([v / T for v in srow]), softmax([v / T for v in trow])
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt))  # KL(teacher || student)
    expected = (1 - alpha) * ce + alpha * T * T * kl / 2
    assert distillation_loss(s, t, y, temperature=T, alpha=alpha).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_with_alpha_zero_is_cross_entropy_and_zero_kl_for_equal_logits():
    s = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    ce = nn.functional.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, s + 3.0, y, alpha=0.0), ce)
    # shifting logits does not change the softmax, so the KL term vanishes
    assert distillation_loss(s, s + 3.0, y, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_training_a_tiny_cnn_on_digits_beats_chance_by_far(digits16):
    torch.manual_seed(0)
    model = _tiny_cnn()
    test = digits16.loader("test", batch_size=256)
    before = evaluate_accuracy(model, test)
    seen = []
    stats = train_classifier(model, digits16.loader("train", batch_size=32), epochs=2, lr=0.1, progress=seen.append)
    after = evaluate_accuracy(model, test)
    assert before < 0.3 and after > 0.6
    assert stats["steps"] == 2 * math.ceil(len(digits16.train) / 32)
    assert [p["epoch"] for p in seen] == [1, 2] and seen[-1]["step"] == stats["steps"]
    assert stats["loss"] < seen[0]["loss"] and stats["seconds"] > 0
    assert not model.training


def test_training_is_reproducible_for_a_seed(digits16):
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        model = _tiny_cnn()
        train_classifier(model, digits16.loader("train", batch_size=64), epochs=1, max_steps=5, seed=7)
        results.append(model[-1].weight.detach().clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("max_steps", [1, 2, 3, 4, 7])
def test_max_steps_bounds_the_number_of_updates(digits16, max_steps):
    stats = train_classifier(_tiny_cnn(), digits16.loader("train", batch_size=128), epochs=3, max_steps=max_steps)
    assert stats["steps"] == max_steps and math.isfinite(stats["loss"])


def test_params_restricts_training_and_keeps_frozen_batchnorm_statistics(digits16):
    torch.manual_seed(0)
    model = _tiny_cnn()
    frozen_conv = model[0].weight.detach().clone()
    frozen_stats = model[1].running_mean.clone()
    head = model[-1].weight.detach().clone()
    train_classifier(model, digits16.loader("train", batch_size=64), epochs=1, max_steps=5, params=model[-1].parameters())
    assert torch.equal(model[0].weight, frozen_conv)
    assert torch.equal(model[1].running_mean, frozen_stats)
    assert not torch.equal(model[-1].weight, head)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_distillation_from_a_teacher_trains_the_student(digits16):
    torch.manual_seed(0)
    teacher = _tiny_cnn()
    train_classifier(teacher, digits16.loader("train", batch_size=32), epochs=2, lr=0.1)
    teacher_weights = teacher[-1].weight.detach().clone()
    student = _tiny_cnn()
    test = digits16.loader("test", batch_size=256)
    before = evaluate_accuracy(student, test)
    stats = train_classifier(student, digits16.loader("train", batch_size=32), epochs=2, lr=0.1, teacher=teacher)
    assert torch.equal(teacher[-1].weight, teacher_weights) and not teacher.training
    assert math.isfinite(stats["loss"])
    assert before < 0.3 and evaluate_accuracy(student, test) > 0.35


def test_zero_epochs_trains_nothing_and_negative_epochs_are_rejected(digits16):
    model = _tiny_cnn()
    assert train_classifier(model, digits16.loader("train"), epochs=0)["steps"] == 0
    with pytest.raises(ConfigError, match="epochs"):
        train_classifier(model, digits16.loader("train"), epochs=-1)


def test_evaluate_accuracy_restores_train_mode(digits16):
    model = _tiny_cnn().train()
    acc = evaluate_accuracy(model, digits16.loader("val", batch_size=64))
    assert 0.0 <= acc <= 1.0 and model.training
