"""Gradient inundation (AIT, Choi et al. CVPR 2022, Sec. 4.2) as a torch.optim optimizer.

For each quantized weight tensor θ_l at step k the gradient is scaled by κ_l so that a
target fraction ρ of its weights change integer code:

    θ_{l,k+1} = θ_{l,k} - η · d(κ_l g_{l,k}),   κ_l = argmin_κ | Δθ^q_l(κ) / dim(θ_l) - ρ |
    Δθ^q_l(κ) = Σ 1[ q(θ_{l,k}) != q(θ_{l,k+1}(κ)) ]

where d(·) is the (Nesterov) SGD direction, so the crossing test uses the very step that
will be taken (the Nesterov look-ahead included), and q(·) requantizes each candidate with
its own, updated per-channel min/max. Search (:func:`search_kappa`): κ=1 if its crossing
fraction already reaches ρ; else double κ until it does (capped by ``kappa_max``: 128
during the GI warm-up), then bisect in [κ/2, κ] for at most ``bisect_steps`` steps, stopping
early within ρ/100, and keep the κ whose fraction is closest to ρ. κ is never below 1.

Parameter groups carrying ``w_bits`` (and ``layer``, a name) are quantized weights; every
other group (biases, BatchNorm) takes the plain SGD step. With ``rho=None`` (or 0) every
κ is 1: the optimizer is plain SGD that still records the crossing fraction of each
quantized layer, so KL-only and AIT runs are measured the same way. After each ``step()``,
``last_records`` holds ``{"layer", "kappa", "crossing_fraction", "n_evals"}`` per layer.
"""

from __future__ import annotations

from typing import Callable

import torch

from landscape.quant.functional import weight_codes


def search_kappa(crossing: Callable[[float], float], rho: float, kappa_max: float = 128.0,
                 bisect_steps: int = 5) -> tuple[float, float, int]:
    """The κ ≥ 1 of METHOD.md §3 for one layer; returns (kappa, crossing_fraction, n_evals).

    ``crossing(kappa)`` is the fraction of the layer's weights whose code changes with the
    step scaled by kappa.
    """
    tol = rho / 100.0
    kappa, frac, n = 1.0, crossing(1.0), 1
    if frac >= rho or kappa_max <= 1.0:
        return kappa, frac, n
    prev = kappa
    while frac < rho and kappa < kappa_max:
        prev, kappa = kappa, min(2.0 * kappa, float(kappa_max))
        frac, n = crossing(kappa), n + 1
        if abs(frac - rho) <= tol:
            return kappa, frac, n
    if frac < rho:  # the cap stops the doubling before ρ is reached
        return kappa, frac, n
    lo, hi = prev, kappa
    best = (abs(frac - rho), kappa, frac)
    for _ in range(bisect_steps):
        if best[0] <= tol:
            break
        mid = 0.5 * (lo + hi)
        f_mid, n = crossing(mid), n + 1
        if abs(f_mid - rho) < best[0]:
            best = (abs(f_mid - rho), mid, f_mid)
        if f_mid >= rho:
            hi = mid
        else:
            lo = mid
    return best[1], best[2], n


class InundatedSGD(torch.optim.Optimizer):
    """SGD with momentum (Nesterov by default) and gradient inundation on quantized weights.

    The momentum buffer follows torch.optim.SGD (dampening 0): ``b = μ b + g'``; the step
    is ``g' + μ b`` with Nesterov, ``b`` without, and ``g' = κ (g + wd θ)``.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, rho: float | None = None, kappa_max: float = 128.0,
                 bisect_steps: int = 5):
        if lr < 0:
            raise ValueError(f"lr={lr}: expected a non-negative learning rate")
        if rho is not None and not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho={rho}: the target crossing fraction must be in [0, 1]")
        if kappa_max < 1.0:
            raise ValueError(f"kappa_max={kappa_max}: must be >= 1 (GI never shrinks a gradient)")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        rho=rho, kappa_max=kappa_max, bisect_steps=bisect_steps,
                        w_bits=None, layer=None)
        super().__init__(params, defaults)
        self.last_records: list[dict] = []

    def set_schedule(self, lr: float | None = None, rho: float | None = None,
                     kappa_max: float | None = None) -> None:
        for group in self.param_groups:
            if lr is not None:
                group["lr"] = lr
            if rho is not None and group["rho"] is not None:
                group["rho"] = rho
            if kappa_max is not None:
                group["kappa_max"] = kappa_max

    @staticmethod
    def _direction(g, buf, momentum, nesterov):
        if momentum == 0:
            return g, None
        new_buf = g if buf is None else momentum * buf + g
        return (g + momentum * new_buf if nesterov else new_buf), new_buf

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_records = []
        for group in self.param_groups:
            lr, mom, nest = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p
                state = self.state[p]
                buf = state.get("momentum_buffer")

                def candidate(kappa):
                    d, new_buf = self._direction(kappa * g if kappa != 1.0 else g, buf, mom, nest)
                    return p - lr * d, new_buf

                bits = group["w_bits"]
                if bits is None:
                    new_p, new_buf = candidate(1.0)
                else:
                    codes = weight_codes(p, bits)

                    def crossing(kappa):
                        return (weight_codes(candidate(kappa)[0], bits) != codes).float().mean().item()

                    rho = group["rho"]
                    if rho:
                        kappa, frac, n = search_kappa(crossing, rho, group["kappa_max"],
                                                      group["bisect_steps"])
                    else:
                        kappa, frac, n = 1.0, crossing(1.0), 1
                    new_p, new_buf = candidate(kappa)
                    self.last_records.append({"layer": group["layer"], "kappa": kappa,
                                              "crossing_fraction": frac, "n_evals": n})
                p.copy_(new_p)
                if new_buf is not None:
                    state["momentum_buffer"] = new_buf.clone() if new_buf is g else new_buf
        return loss


def param_groups(student: torch.nn.Module, gi_layers=None) -> list[dict]:
    """One group per quantized weight (``layer``, ``w_bits``) and one for everything else.

    ``gi_layers``: names of the quantized layers whose weights get GI (default: all).
    """
    from landscape.quant import quantized_layers

    groups, taken = [], set()
    for name, m in quantized_layers(student):
        if gi_layers is None or name in gi_layers:
            groups.append({"params": [m.weight], "layer": name, "w_bits": m.w_bits})
            taken.add(id(m.weight))
    rest = [p for p in student.parameters() if p.requires_grad and id(p) not in taken]
    if rest:
        groups.append({"params": rest, "layer": None, "w_bits": None})
    return groups
