"""The one supervised training loop: pretraining and knowledge-distilled recovery fine-tuning.

SGD with Nesterov momentum under a one-cycle learning-rate schedule: it reaches a good
accuracy in few epochs, which is what both the embedded default's pretraining and the
pipeline's short recovery budgets need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.7,
) -> torch.Tensor:
    """Hinton knowledge-distillation loss, averaged over the batch.

    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t || p_s),  p = softmax(logits / T)

    The KL term takes the teacher's softened distribution as the target (Hinton et al. 2015);
    T^2 keeps its gradient scale independent of T.

    :param student_logits: (N, K) logits of the model being trained
    :param teacher_logits: (N, K) logits of the reference model
    :param targets: (N,) class indices
    :param temperature: softening temperature T
    :param alpha: weight of the distillation term; 0 is plain cross-entropy
    """
    ce = F.cross_entropy(student_logits, targets)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _freeze_outside(model: nn.Module, params: list[nn.Parameter]) -> dict[nn.Parameter, bool]:
    """Set requires_grad=False on every parameter not in ``params``; return the old flags."""
    keep = {id(p) for p in params}
    saved = {}
    for p in model.parameters():
        saved[p] = p.requires_grad
        p.requires_grad_(id(p) in keep)
    return saved


def _set_frozen_norms_eval(model: nn.Module) -> None:
    # A frozen BatchNorm must not update its running statistics either, or the "frozen" part
    # of the network still drifts under the new data.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = list(m.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                m.eval()


def _one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm up over a quarter of the steps, then cosine-anneal; constant for 1-2 steps.

    OneCycleLR needs at least one step in each phase, which tiny recovery budgets lack.
    """
    if steps < 3:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=max(0.25, 2.0 / steps), anneal_strategy="cos"
    )


def train_classifier(
    model: nn.Module,
    loader: Iterable,
    *,
    epochs: int,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    teacher: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    params: Iterable[nn.Parameter] | None = None,
    max_steps: int | None = None,
    max_batches_per_epoch: int | None = None,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``model`` in place on ``loader``; with a teacher, by knowledge distillation.

    The model is left in eval mode; the requires_grad flags are restored afterwards.

    :param model: the classifier to train (trained on the device its parameters live on)
    :param loader: iterable of (images, class indices) batches, e.g. ``DataBundle.loader("train")``;
        with a logit cache as the teacher, each batch carries the images' indices third
    :param epochs: passes over ``loader`` (training stops earlier when ``max_steps`` is reached)
    :param lr: peak learning rate of the one-cycle schedule (SGD, Nesterov momentum 0.9)
    :param weight_decay: L2 weight decay
    :param teacher: reference model for distillation, run in eval mode without gradients; or
        a ``pipeline.TeacherLogits`` cache called with (indices, images)
    :param temperature: distillation temperature T
    :param alpha: weight of the distillation term in ``distillation_loss``
    :param params: the parameters to train; all others are frozen and the BatchNorm layers of
        frozen parts kept in eval mode. None trains every parameter
    :param max_steps: upper bound on optimizer steps across all epochs
    :param max_batches_per_epoch: cap on batches per epoch (quick runs and tests)
    :param seed: seeds the global torch RNG inside the loop (dropout); the caller's RNG state
        is restored afterwards
    :param progress: called after every epoch with ``{"epoch", "epochs", "step", "loss", "lr",
        "seconds"}``
    :return: ``{"loss": mean loss of the last epoch, "steps": optimizer steps, "seconds": wall time}``
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    start = time.perf_counter()
    trainable = list(params) if params is not None else [p for p in model.parameters()]
    try:
        n_batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n_batches = None
    if n_batches is not None and max_batches_per_epoch:
        n_batches = min(n_batches, max_batches_per_epoch)
    planned = epochs * n_batches if n_batches is not None else None
    if max_steps is not None:
        planned = max_steps if planned is None else min(planned, max_steps)
    if not trainable or epochs == 0 or planned == 0:
        return {"loss": float("nan"), "steps": 0, "seconds": time.perf_counter() - start}
    if planned is None:
        raise ConfigError("a loader without len() needs max_steps to plan the learning-rate schedule")

    device = _device_of(model)
    saved_flags = _freeze_outside(model, trainable)
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    scheduler = _one_cycle(optimizer, lr, planned)
    if isinstance(teacher, nn.Module):
        teacher.eval()
    step = 0
    epoch_loss = float("nan")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for epoch in range(epochs):
                model.train()
                _set_frozen_norms_eval(model)
                total, count = 0.0, 0
                for i, (images, targets, *cached) in enumerate(loader):
                    if step >= planned or (max_batches_per_epoch and i >= max_batches_per_epoch):
                        break
                    images, targets = images.to(device), targets.to(device)
                    logits = model(images)
                    if cached:  # a logit cache: the third entry holds the images' indices
                        loss = distillation_loss(logits, teacher(cached[0], images).to(device), targets, temperature, alpha)
                    elif teacher is None:
                        loss = F.cross_entropy(logits, targets)
                    else:
                        with torch.no_grad():
                            teacher_logits = teacher(images)
                        loss = distillation_loss(logits, teacher_logits, targets, temperature, alpha)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    total += loss.item() * len(targets)
                    count += len(targets)
                if count:
                    epoch_loss = total / count
                info = {
                    "epoch": epoch + 1,
                    "epochs": epochs,
                    "step": step,
                    "loss": epoch_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": time.perf_counter() - start,
                }
                logger.debug("train epoch %(epoch)d/%(epochs)d loss %(loss).4f", info)
                if progress is not None:
                    progress(info)
                if step >= planned:
                    break
    finally:
        for p, flag in saved_flags.items():
            p.requires_grad_(flag)
        model.eval()
    return {"loss": epoch_loss, "steps": step, "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` over ``loader`` (eval mode, no gradients).

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct, count = 0, 0
    try:
        for images, targets in loader:
            logits = model(images.to(device))
            correct += (logits.argmax(dim=1).cpu() == targets.cpu()).sum().item()
            count += len(targets)
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError("evaluate_accuracy got an empty loader: the split has no images")
    return correct / count
