r"""Output-space Hessians of the softmax losses, shared by :mod:`landscape.losses` (logits of
shape (B, C)) and :mod:`landscape.lm_losses` (the predicted tokens of (B, T, V) logits).

For a softmax likelihood π = softmax(f) scaled by κ, the Hessian of the loss with respect to
the logits of sample i is ``κ (diag π_i − π_i π_iᵀ)``, which is also the Fisher information of
that likelihood: the Gauss-Newton and Fisher operators of :mod:`landscape.curvature.ggn` take
them through ``apply`` / ``dense`` / ``fisher_factors``.
"""

from __future__ import annotations

import torch

from .curvature.errors import CurvatureError

__all__ = ["EXACT_FISHER_MAX_BYTES", "SoftmaxOutputHessian", "SumOutputHessian"]

#: The largest exact-Fisher factor tensor (C·B·C numbers for B rows over C classes) built before
#: refusing. The Fisher keeps one per cached batch, a product makes two temporaries of its size
#: and the language-model wrapper copies it into all B·T rows: about four times this per batch
#: at a product, so 256 MiB keeps the peak near 1 GiB. Classifiers are far below it (C = 10:
#: 800 bytes a row in float64; C = 1000 at 64 rows in float32 is 244 MiB); a vocabulary is far
#: above (V = 50257: 9.4 GiB for one float32 row). Raise it if you have the memory.
EXACT_FISHER_MAX_BYTES = 256 * 2**20


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
        r"""Factors G (K, B, C) with ``M_i = Σ_k G_ki G_kiᵀ`` (exactly, or in expectation when sampled).

        Sampled (``mc_samples`` = S): ``G_si = √(κ/S) (π_i − e_{y_si})``, y_si ~ π_i, built as S
        copies of π minus 1 at the sampled label (a scatter: memory S·B·C, no C×C identity).
        Exact (``mc_samples=None``): ``G_ci = √(κ π_ic) (π_i − e_c)`` for every class c, C·B·C
        numbers; refused with a :class:`~landscape.curvature.CurvatureError` above
        :data:`EXACT_FISHER_MAX_BYTES` (a vocabulary-sized C), since the exact Fisher of a
        softmax likelihood *is* M, the GGN's output Hessian.
        """
        p = self.probs
        B, C = p.shape
        if mc_samples is None:
            need = C * B * C * p.element_size()
            if need > EXACT_FISHER_MAX_BYTES:
                raise CurvatureError(
                    f"the exact Fisher's factors for {B} rows over {C} classes/tokens are {C}x{B}x{C} numbers "
                    f"({need / 2**30:.3g} GiB, above landscape.output_hessians.EXACT_FISHER_MAX_BYTES = "
                    f"{EXACT_FISHER_MAX_BYTES / 2**20:.0f} MiB); for a softmax loss the exact Fisher equals the GGN: "
                    "use GGN(...) (curvature = \"ggn\"), or Fisher(..., mc_samples=S) for sampled labels")
            eye = torch.eye(C, dtype=p.dtype, device=p.device)
            # G[c, i] = sqrt(κ p_ic) (p_i − e_c)
            return (self.scale * p.T)[:, :, None].sqrt() * (p[None, :, :] - eye[:, None, :])
        idx = torch.multinomial(p.detach().double().cpu(), mc_samples, replacement=True, generator=generator)
        G = p[None].repeat(mc_samples, 1, 1)  # (S, B, C): π_i for every draw
        G.scatter_add_(2, idx.T.to(p.device)[:, :, None], G.new_full((mc_samples, B, 1), -1.0))  # π_i − e_y
        return G.mul_((self.scale / mc_samples) ** 0.5)


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
