"""One quantized student per (quantizer, bits, seed): quantize the teacher, calibrate its
activation ranges on real training batches (``ptq``), and for ``qat`` fine-tune it for a few
steps on real data with CE + T²·KL to the teacher (the loss of the trainer's ``kd`` run).

Learnable quantizer parameters (LSQ's step, PACT's clip) are trained by the QAT steps with the
weights; they are never curvature parameters: :func:`float_names` lists the student's
parameters that the float teacher also has (quantize_model keeps the layer names).
"""

from __future__ import annotations

import torch
from torch import nn

from landscape.data import Dataset, iterate_batches
from landscape.losses import distillation_loss
from landscape.quant import calibrate, quantize_model

__all__ = ["make_student", "float_names"]


def float_names(student: nn.Module, teacher: nn.Module) -> list[str]:
    """The student's parameters that are the teacher's too (weights, biases, BatchNorm), in order."""
    mine = {n for n, _ in teacher.named_parameters()}
    return [n for n, _ in student.named_parameters() if n in mine]


def make_student(teacher: nn.Module, weight, act, bits: int, a_bits: int | None, data: Dataset,
                 settings: dict, seed: int) -> nn.Module:
    """The quantized, calibrated (and for ``mode = "qat"`` fine-tuned) student, in eval mode."""
    student = quantize_model(teacher, bits, a_bits, weight=weight, act=act).requires_grad_(True)  # a frozen teacher's copy
    gen = torch.Generator().manual_seed(seed)
    calib = [b for _, b in zip(range(settings["calib_batches"]),
                               iterate_batches(data.x_train, data.y_train, settings["batch_size"], gen))]
    calibrate(student, calib)
    if settings["mode"] == "qat":
        _kd_steps(student, teacher, data, settings, gen)
    return student.eval()


def _kd_steps(student: nn.Module, teacher: nn.Module, data: Dataset, settings: dict, gen: torch.Generator) -> None:
    """``qat_steps`` Nesterov SGD steps of CE + T²·KL (batchmean) on real training batches."""
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=settings["qat_lr"], momentum=0.9, nesterov=True)
    T, done = settings["temperature"], 0
    while done < settings["qat_steps"]:
        for x, y in iterate_batches(data.x_train, data.y_train, settings["batch_size"], gen, drop_last=True):
            with torch.no_grad():
                t = teacher(x)
            loss = distillation_loss(student(x), y, t, T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == settings["qat_steps"]:
                break
    opt.zero_grad(set_to_none=True)
    for p in params:
        p.grad = None
