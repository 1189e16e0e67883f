r"""Loss functions for the curvature engine and the trainer.

Two forms of the same maths, so that nothing is written twice:

* pure functions on logits, for training loops:
  :func:`ce`, :func:`kl_divergence`, :func:`distillation_loss`;
* small callable objects ``loss_fn(model, batch) -> scalar`` for the curvature engine and the
  analyzers: :func:`cross_entropy`, :func:`kl_to_teacher`, :func:`distillation`. Each has a
  ``name`` (``"ce"``, ``"kl"``, ``"ce+kl"``) and a readable ``repr``.

A batch is a tuple ``(x, y)``: inputs and integer labels.

Knowledge-distillation KL (Hinton et al. 2015), as in GDFQ and AIT (Choi et al., CVPR 2022):

    KL_T(t ‖ s) = T² · Σ_c p_c (log p_c − log q_c),   p = softmax(t/T), q = softmax(s/T),

with the teacher's logits t computed without gradient. ``reduction``:

* ``"batchmean"``: sum over classes, mean over the batch (the true KL per sample);
* ``"mean"``: mean over batch × classes, i.e. ``batchmean / C`` (``nn.KLDivLoss()``'s default,
  used by the official AIT code, whose learning rate is tuned to that scale).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ce",
    "kl_divergence",
    "distillation_loss",
    "cross_entropy",
    "kl_to_teacher",
    "distillation",
    "CrossEntropy",
    "KLToTeacher",
    "Distillation",
    "REDUCTIONS",
]

REDUCTIONS = ("batchmean", "mean")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return float(temperature)


# ---------------------------------------------------------------------------- pure functions
def ce(student_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``−(1/B) Σ_i log softmax(s_i)[y_i]`` (mean over the batch)."""
    return F.cross_entropy(student_logits, y)


def kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` with the given ``reduction``.

    The teacher logits are detached: no gradient flows into the teacher.
    """
    T = _check_temperature(temperature)
    _check_reduction(reduction)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    log_q = F.log_softmax(student_logits / T, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / T, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
    denom = student_logits.numel() if reduction == "mean" else max(1, student_logits.shape[0] if student_logits.dim() > 1 else 1)
    return kl * (T * T / denom)


def distillation_loss(
    student_logits: torch.Tensor,
    y: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    ce_scale: float = 1.0,
    kd_scale: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """``ce_scale · CE(s, y) + kd_scale · KL_T(t ‖ s)``; a zero scale skips that term entirely."""
    total = student_logits.new_zeros(())
    if ce_scale:
        total = total + ce_scale * ce(student_logits, y)
    if kd_scale:
        total = total + kd_scale * kl_divergence(student_logits, teacher_logits, temperature, reduction)
    return total


# ---------------------------------------------------------------------------- loss_fn objects
def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"a batch must be a tuple (x, y), got {type(batch).__name__}")


def _teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Teacher outputs under ``no_grad`` and in eval mode (each module's mode restored after)."""
    modes = [(m, m.training) for m in teacher.modules()]
    teacher.eval()
    try:
        with torch.no_grad():
            return teacher(x)
    finally:
        for m, mode in modes:
            m.training = mode


def _model_name(m: nn.Module) -> str:
    return type(m).__name__


class CrossEntropy:
    """``loss_fn(model, (x, y)) = CE(model(x), y)``, the mean over the batch."""

    name = "ce"

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _unpack(batch)
        if y is None:
            raise TypeError("cross_entropy needs labels: a batch (x, y)")
        return ce(model(x), y)

    def __repr__(self) -> str:
        return "cross_entropy()"


class KLToTeacher:
    """``loss_fn(model, (x, y)) = T² · KL(softmax(teacher(x)/T) ‖ softmax(model(x)/T))``.

    The teacher runs in eval mode under ``no_grad``; labels are ignored.
    """

    name = "kl"

    def __init__(self, teacher: nn.Module, temperature: float = 1.0, reduction: str = "batchmean"):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher
        self.temperature = _check_temperature(temperature)
        self.reduction = _check_reduction(reduction)

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, _ = _unpack(batch)
        return kl_divergence(model(x), _teacher_logits(self.teacher, x), self.temperature, self.reduction)

    def __repr__(self) -> str:
        return (
            f"kl_to_teacher(teacher={_model_name(self.teacher)}, temperature={self.temperature:g}, "
            f"reduction={self.reduction!r})"
        )


class Distillation:
    """``loss_fn(model, (x, y)) = ce_scale · CE + kd_scale · T² · KL(teacher ‖ student)``."""

    def __init__(
        self,
        teacher: nn.Module,
        temperature: float = 1.0,
        ce_scale: float = 1.0,
        kd_scale: float = 1.0,
        reduction: str = "batchmean",
    ):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher
        self.temperature = _check_temperature(temperature)
        self.ce_scale = float(ce_scale)
        self.kd_scale = float(kd_scale)
        self.reduction = _check_reduction(reduction)
        if not self.ce_scale and not self.kd_scale:
            raise ValueError("distillation: ce_scale and kd_scale are both 0")

    @property
    def name(self) -> str:
        parts = [n for n, s in (("ce", self.ce_scale), ("kl", self.kd_scale)) if s]
        return "+".join(parts)

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _unpack(batch)
        if self.ce_scale and y is None:
            raise TypeError("distillation with ce_scale != 0 needs labels: a batch (x, y)")
        s = model(x)
        t = _teacher_logits(self.teacher, x) if self.kd_scale else s.detach()
        return distillation_loss(s, y, t, self.temperature, self.ce_scale, self.kd_scale, self.reduction)

    def __repr__(self) -> str:
        return (
            f"distillation(teacher={_model_name(self.teacher)}, temperature={self.temperature:g}, "
            f"ce_scale={self.ce_scale:g}, kd_scale={self.kd_scale:g}, reduction={self.reduction!r})"
        )


def cross_entropy() -> CrossEntropy:
    """The cross-entropy loss_fn, ``name="ce"``."""
    return CrossEntropy()


def kl_to_teacher(teacher: nn.Module, temperature: float = 1.0, reduction: str = "batchmean") -> KLToTeacher:
    """The distillation KL loss_fn, ``name="kl"`` (AIT: temperature 20, reduction ``"mean"``)."""
    return KLToTeacher(teacher, temperature, reduction)


def distillation(
    teacher: nn.Module,
    temperature: float = 1.0,
    ce_scale: float = 1.0,
    kd_scale: float = 1.0,
    reduction: str = "batchmean",
) -> Distillation:
    """``ce_scale·CE + kd_scale·KL`` loss_fn (GDFQ: 1, 1; AIT: 0, 1), ``name="ce+kl"`` (or ``"kl"``/``"ce"``)."""
    return Distillation(teacher, temperature, ce_scale, kd_scale, reduction)
