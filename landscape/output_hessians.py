r"""Output-space Hessians of the softmax losses, shared by :mod:`landscape.losses` (logits of
shape (B, C)) and :mod:`landscape.lm_losses` (the predicted tokens of (B, T, V) logits).

For a softmax likelihood π = softmax(f) scaled by κ, the Hessian of the loss with respect to
the logits of sample i is ``κ (diag π_i − π_i π_iᵀ)``, which is also the Fisher information of
that likelihood: the Gauss-Newton and Fisher operators of :mod:`landscape.curvature.ggn` take
them through ``apply`` / ``dense`` / ``fisher_factors``.
"""

from __future__ import annotations

import torch

__all__ = ["SoftmaxOutputHessian", "SumOutputHessian"]


class SoftmaxOutputHessian:
    r"""``M_i = κ (diag(π_i) − π_i π_iᵀ)`` for every sample i: π (B, C) probabilities, κ a scale.

    ``apply(w)`` gives ``M_i w_i`` for a (B, C) tensor w; ``dense()`` the (B, C, C) blocks.
    ``fisher_factors(mc_samples, generator)`` gives G (K, B, C) with ``M_i = Σ_k G_ki G_kiᵀ``
    as an expectation over labels y ~ π_i of ``κ (π_i − e_y)(π_i − e_y)ᵀ``: exactly (K = C,
    ``G_ci = √(κ π_ic) (π_i − e_c)``) or by ``mc_samples`` sampled labels (K = mc_samples).
    """

    def __init__(self, probs: torch.Tensor, scale: float):
        self.probs = probs.detach()
        self.scale = float(scale)

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        p = self.probs
        return self.scale * (p * w - p * (p * w).sum(dim=-1, keepdim=True))

    def dense(self) -> torch.Tensor:
        p = self.probs
        return self.scale * (torch.diag_embed(p) - p[:, :, None] * p[:, None, :])

    def fisher_factors(self, mc_samples: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.probs
        B, C = p.shape
        eye = torch.eye(C, dtype=p.dtype, device=p.device)
        if mc_samples is None:
            # G[c, i] = sqrt(κ p_ic) (p_i − e_c)
            return (self.scale * p.T)[:, :, None].sqrt() * (p[None, :, :] - eye[:, None, :])
        idx = torch.multinomial(p.detach().double().cpu(), mc_samples, replacement=True, generator=generator)
        onehot = eye[idx.T.to(p.device)]  # (S, B, C)
        return (self.scale / mc_samples) ** 0.5 * (p[None] - onehot)


class SumOutputHessian:
    """A sum of output-space Hessians (the distillation loss's CE and KL terms)."""

    def __init__(self, terms: list):
        self.terms = terms

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        return sum(t.apply(w) for t in self.terms)

    def dense(self) -> torch.Tensor:
        return sum(t.dense() for t in self.terms)

    def fisher_factors(self, mc_samples: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat([t.fisher_factors(mc_samples, generator) for t in self.terms], dim=0)
