"""The mean training-loss gradient of an epoch (METHOD.md §2.5), accumulated step by step.

    mean = GradientMean(student)
    for each student step:  loss.backward(); mean.add(); optimizer.step()
    ckpt["epoch_grad"] = mean.result()   # {"names", "mean", "n_steps"}

    mean_e = (1 / K) Σ_k ∇θ L_k(θ_k)     over the K optimizer steps of epoch e

∇θ L_k is ``p.grad`` right after ``backward()``: before GI's κ, before weight decay and
before momentum. Every parameter with ``requires_grad`` counts, in ``named_parameters``
order, flattened and concatenated; a parameter without a gradient at a step adds zero.
Sums are kept in float64 (K can be thousands); the mean is stored as float32.
"""

from __future__ import annotations

import torch
from torch import nn


class GradientMean:
    def __init__(self, model: nn.Module):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.sums = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in self.params]
        self.n_steps = 0

    @torch.no_grad()
    def add(self) -> None:
        """Add the current ``.grad`` of every parameter (one optimizer step)."""
        for s, p in zip(self.sums, self.params):
            if p.grad is not None:
                s.add_(p.grad)
        self.n_steps += 1

    def result(self) -> dict | None:
        """``{"names", "mean": 1-D float32 CPU tensor, "n_steps"}``; None if no step was added."""
        if not self.n_steps:
            return None
        flat = torch.cat([s.reshape(-1) for s in self.sums]) / self.n_steps
        return {"names": list(self.names), "mean": flat.to(torch.float32).cpu(),
                "n_steps": self.n_steps}
