r"""Loss functions for the curvature engine and the trainer.

Two forms of the same maths, so that nothing is written twice:

* pure functions on logits, for training loops:
  :func:`ce`, :func:`kl_divergence`, :func:`distillation_loss`;
* small callable objects ``loss_fn(model, batch) -> scalar`` for the curvature engine and the
  analyzers: :func:`cross_entropy`, :func:`kl_to_teacher`, :func:`distillation`. Each has a
  ``name`` (``"ce"``, ``"kl"``, ``"ce+kl"``) and a readable ``repr``.

The loss objects are ``nn.Module``\ s, so that what their value depends on is explicit and
seen by the curvature engine's freshness check (:mod:`landscape.curvature.state`) through the
module walk everyone knows: the teacher is a registered submodule (``loss.teacher``), the
temperature, reduction and scales are plain attributes. The curvature engine and the trainer
take parameters from the model (the student) only, never from a loss object, so the teacher's
parameters are in no operator and no optimizer. A subclass that is a dataclass is declared
``@dataclasses.dataclass(eq=False)`` (a module must stay hashable) with plain fields; the
module is initialised in ``__post_init__``.

The loss objects also split themselves at the model's outputs f (the logits), which the
Gauss-Newton and Fisher operators need: ``outputs(model, batch) -> f``,
``on_outputs(f, batch) -> scalar`` (so ``loss_fn(model, batch) == on_outputs(outputs(model,
batch), batch)``) and ``output_hessian(f, batch)``, the Hessian of the batch loss with respect
to f, block-diagonal over samples i:

* CE (mean over a batch of B): ``∂²L/∂f_i² = (diag(p_i) − p_i p_iᵀ) / B``, ``p_i = softmax(f_i)``;
* KL to a teacher at temperature T: with ``s_i = softmax(f_i / T)``,
  ``∂²L/∂f_i² = (diag(s_i) − s_i s_iᵀ) / D`` with D = B (``"batchmean"``) or B·C (``"mean"``):
  the T² of the loss and the 1/T² of the chain rule cancel, and the teacher enters only the
  gradient, not the curvature;
* the distillation loss: ``ce_scale`` · CE's + ``kd_scale`` · KL's.

Each is a :class:`SoftmaxOutputHessian` ``κ (diag π − π πᵀ)``, which is also the Fisher
information of the softmax likelihood π scaled by κ, so for these losses the true Fisher
equals the GGN; :meth:`SoftmaxOutputHessian.fisher_factors` gives it as an expectation over
classes (exact) or over labels sampled from π (Monte Carlo).

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

from .errors import LandscapeError
from .lm_losses import CausalLM, HFLoss, causal_lm, hf_loss  # the LM losses on dict batches (issue 17)
from .output_hessians import SoftmaxOutputHessian, SumOutputHessian

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
    "SoftmaxOutputHessian",
    "SumOutputHessian",
    "causal_lm",  # the LM losses on dict batches, re-exported from landscape.lm_losses
    "hf_loss",
    "CausalLM",
    "HFLoss",
]

REDUCTIONS = ("batchmean", "mean")


class LossError(LandscapeError, ValueError):
    """A loss built or called with what it cannot use (a reduction, a temperature, logits of the wrong
    shape); the message names the argument and the fix. Still a ``ValueError``."""


class LossTypeError(LossError, TypeError):
    """A :class:`LossError` about the kind of an argument (a teacher that is not a module, a batch that
    is not ``(x, y)``); still a ``TypeError`` too."""


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise LossError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise LossError(f"temperature must be a positive number, got {temperature!r}")
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
        raise LossError(
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
    hint = ": for a dict batch {'input_ids': ...} use landscape.losses.causal_lm()" if isinstance(batch, dict) else ""
    raise LossTypeError(f"a batch must be a tuple (x, y), got {type(batch).__name__}{hint}")


# ---------------------------------------------------------------------------- output-space Hessians
def _check_logits(f: torch.Tensor) -> torch.Tensor:
    if f.dim() != 2:
        raise LossError(f"the output-space Hessian needs 2-D logits (batch, classes), got shape {tuple(f.shape)}")
    return f


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


class _LossModule(nn.Module):
    """A ``loss_fn(model, batch)`` object that is an ``nn.Module`` (its teacher a submodule, its
    settings plain attributes), called as ``loss(model, batch)``."""

    def __post_init__(self) -> None:  # a dataclass subclass: its generated __init__ calls this, not ours
        nn.Module.__init__(self)

    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.on_outputs(self.outputs(model, batch), batch)


class CrossEntropy(_LossModule):
    """``loss_fn(model, (x, y)) = CE(model(x), y)``, the mean over the batch."""

    name = "ce"

    def outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The model's logits on the batch's inputs."""
        return model(_unpack(batch)[0])

    def on_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """CE of given logits against the batch's labels."""
        _, y = _unpack(batch)
        if y is None:
            raise LossTypeError("cross_entropy needs labels: a batch (x, y)")
        return ce(outputs, y)

    def output_hessian(self, outputs: torch.Tensor, batch: Any) -> SoftmaxOutputHessian:
        """``(diag(p) − p pᵀ) / B`` per sample, p = softmax(f)."""
        f = _check_logits(outputs).detach()
        return SoftmaxOutputHessian(F.softmax(f, dim=-1), 1.0 / f.shape[0])

    def __repr__(self) -> str:
        return "cross_entropy()"


class KLToTeacher(_LossModule):
    """``loss_fn(model, (x, y)) = T² · KL(softmax(teacher(x)/T) ‖ softmax(model(x)/T))``.

    The teacher runs in eval mode under ``no_grad``; labels are ignored.
    """

    name = "kl"

    def __init__(self, teacher: nn.Module, temperature: float = 1.0, reduction: str = "batchmean"):
        if not isinstance(teacher, nn.Module):
            raise LossTypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        super().__init__()
        self.teacher = teacher  # a registered submodule
        self.temperature = _check_temperature(temperature)
        self.reduction = _check_reduction(reduction)

    def outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The student's logits on the batch's inputs."""
        return model(_unpack(batch)[0])

    def on_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """The KL of given student logits to the teacher's on the batch's inputs."""
        x, _ = _unpack(batch)
        return kl_divergence(outputs, _teacher_logits(self.teacher, x), self.temperature, self.reduction)

    def output_hessian(self, outputs: torch.Tensor, batch: Any) -> SoftmaxOutputHessian:
        """``(diag(s) − s sᵀ) / D`` per sample, s = softmax(f/T), D = B or B·C (see the module)."""
        f = _check_logits(outputs).detach()
        denom = f.numel() if self.reduction == "mean" else f.shape[0]
        return SoftmaxOutputHessian(F.softmax(f / self.temperature, dim=-1), 1.0 / denom)

    def __repr__(self) -> str:
        return (
            f"kl_to_teacher(teacher={_model_name(self.teacher)}, temperature={self.temperature:g}, "
            f"reduction={self.reduction!r})"
        )


class Distillation(_LossModule):
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
            raise LossTypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        super().__init__()
        self.teacher = teacher  # a registered submodule
        self.temperature = _check_temperature(temperature)
        self.ce_scale = float(ce_scale)
        self.kd_scale = float(kd_scale)
        self.reduction = _check_reduction(reduction)
        if not self.ce_scale and not self.kd_scale:
            raise LossError("distillation: ce_scale and kd_scale are both 0; make one of them non-zero")

    @property
    def name(self) -> str:
        parts = [n for n, s in (("ce", self.ce_scale), ("kl", self.kd_scale)) if s]
        return "+".join(parts)

    def outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The student's logits on the batch's inputs."""
        return model(_unpack(batch)[0])

    def on_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """``ce_scale·CE + kd_scale·KL`` of given student logits."""
        x, y = _unpack(batch)
        if self.ce_scale and y is None:
            raise LossTypeError("distillation with ce_scale != 0 needs labels: a batch (x, y)")
        t = _teacher_logits(self.teacher, x) if self.kd_scale else outputs.detach()
        return distillation_loss(outputs, y, t, self.temperature, self.ce_scale, self.kd_scale, self.reduction)

    def output_hessian(self, outputs: torch.Tensor, batch: Any) -> SumOutputHessian:
        """``ce_scale`` · CE's output Hessian + ``kd_scale`` · KL's."""
        f = _check_logits(outputs).detach()
        terms = []
        if self.ce_scale:
            terms.append(SoftmaxOutputHessian(F.softmax(f, dim=-1), self.ce_scale / f.shape[0]))
        if self.kd_scale:
            denom = f.numel() if self.reduction == "mean" else f.shape[0]
            terms.append(SoftmaxOutputHessian(F.softmax(f / self.temperature, dim=-1), self.kd_scale / denom))
        return SumOutputHessian(terms)

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
