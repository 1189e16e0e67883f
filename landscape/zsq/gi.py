"""Gradient inundation (AIT, Choi et al. CVPR 2022, Sec. 4.2) as a torch.optim optimizer.

The official step (``form="official"``, the default; METHOD.md §3). For each quantized
weight θ_l at step k, with g the raw gradient (weight decay included, as torch.optim.SGD):

    b_{l,k} = μ · b_{l,k-1} + g_{l,k}        (b = g at the first step; κ never enters b)
    d_{l,k} = g_{l,k} + μ · b_{l,k}          (Nesterov; d = b without Nesterov, d = g if μ = 0)
    θ_{l,k+1} = θ_{l,k} - η · κ_l · d_{l,k}   (κ scales this step only)
    κ_l = search of :func:`search_kappa` on Δθ^q_l(κ) / dim(θ_l),
    Δθ^q_l(κ) = Σ 1[ q(θ_{l,k}) != q(θ_{l,k} - η κ d_{l,k}) ]

q(·) requantizes each candidate with its own per-channel min/max (``weight_codes`` with the
layer's zero point), so the crossing test measures exactly the step that is taken.

``form="buffer"`` keeps this package's first reading as an ablation: κ scales the
gradient before momentum (``b = μ b + κ g``, ``d = κ g + μ b``), so a large κ keeps acting
through the buffer on later steps. With κ uncapped it collapsed 2 of 3 seeds of the
embedded default; the official form did not (issue 7).

Parameter groups carrying ``w_bits`` (and ``layer``, a name, and ``zero_point``, the
layer's grid) are quantized weights; every other group (biases, BatchNorm) takes the plain
SGD step. With ``rho=None`` (or 0) every κ is 1: the optimizer is plain SGD (bit-identical
to torch.optim.SGD) that still records each quantized layer's crossing fraction, so
KL-only and AIT runs are measured the same way. After each ``step()``, ``last_records``
holds ``{"layer", "kappa", "crossing_fraction", "n_evals", "capped"}`` per layer.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from landscape.quant.functional import weight_codes
from landscape.zsq.errors import OptimizerSettingError

FORMS = ("official", "buffer")


class KappaSearch(NamedTuple):
    kappa: float
    crossing_fraction: float   # of the κ returned: the step that is taken
    n_evals: int               # crossing tests done
    capped: bool               # the doubling stopped at kappa_max before reaching ρ


def search_kappa(crossing: Callable[[float], float], rho: float, kappa_max: float = 128.0,
                 bisect_steps: int = 5) -> KappaSearch:
    """The κ ≥ 1 of METHOD.md §3 for one layer, as the official code searches it.

    ``crossing(kappa)`` is the fraction of the layer's weights whose code changes with the
    step scaled by kappa. Rule: κ=1 if its fraction already reaches ρ; else double κ until
    the fraction reaches ρ or κ reaches ``kappa_max`` (the GI warm-up's 128; a safety cap
    afterwards), then bisect in [κ/2, κ] for ``bisect_steps`` steps, stopping early when
    the fraction is within ρ/100, and keep the last midpoint (official: not the bracket end,
    so the fraction may fall a little short of ρ).

        >>> search_kappa(lambda k: k / 1000, rho=0.006)   # doubles 1, 2, 4, 8; bisects [4, 8]
        KappaSearch(kappa=6.0, crossing_fraction=0.006, n_evals=5, capped=False)
    """
    tol = rho / 100.0
    kappa, frac, n = 1.0, crossing(1.0), 1
    if frac >= rho or kappa_max <= 1.0:
        return KappaSearch(kappa, frac, n, frac < rho)
    prev, capped = kappa, False
    while True:
        prev, kappa = kappa, min(2.0 * kappa, float(kappa_max))
        frac, n = crossing(kappa), n + 1
        if frac >= rho:
            break
        if kappa >= kappa_max:
            capped = True
            break
    lo, hi = prev, kappa
    for _ in range(bisect_steps):
        kappa = 0.5 * (lo + hi)
        frac, n = crossing(kappa), n + 1
        if abs(frac - rho) < tol:
            break
        if frac < rho:
            lo = kappa
        else:
            hi = kappa
    return KappaSearch(kappa, frac, n, capped)


class InundatedSGD(torch.optim.Optimizer):
    """SGD with momentum (Nesterov by default) and gradient inundation on quantized weights.

    Without GI (κ = 1) this is torch.optim.SGD with dampening 0: ``b = μ b + g``, step
    ``g + μ b`` (Nesterov) or ``b``, ``g`` including weight decay. With GI the quantized
    weights take the step of the module docstring (``form`` chooses official or buffer).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, rho: float | None = None, kappa_max: float = 128.0,
                 bisect_steps: int = 5, form: str = "official"):
        if lr < 0:
            raise OptimizerSettingError(f"lr={lr}: expected a non-negative learning rate")
        if rho is not None and not 0.0 <= rho <= 1.0:
            raise OptimizerSettingError(f"rho={rho}: the target crossing fraction must be in [0, 1]")
        if kappa_max < 1.0:
            raise OptimizerSettingError(f"kappa_max={kappa_max}: must be >= 1 (GI never shrinks a gradient)")
        if form not in FORMS:
            raise OptimizerSettingError(f"form={form!r}: expected one of {', '.join(FORMS)}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        rho=rho, kappa_max=kappa_max, bisect_steps=bisect_steps,
                        w_bits=None, layer=None, zero_point="integral")
        super().__init__(params, defaults)
        self.form = form
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

    def _direction(self, g, buf, momentum, nesterov, kappa):
        """(d, new buffer) of the step scaled by ``kappa`` (the official form: d scaled
        later; the buffer form: κ g fed to the buffer)."""
        if self.form == "buffer" and kappa != 1.0:
            g = kappa * g
        if momentum == 0:
            return g, None
        new_buf = g.clone() if buf is None else buf.mul(momentum).add_(g)
        return (g.add(new_buf, alpha=momentum) if nesterov else new_buf), new_buf

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
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                buf = state.get("momentum_buffer")
                bits = group["w_bits"]
                if bits is None:
                    d, new_buf = self._direction(g, buf, mom, nest, 1.0)
                    p.add_(d, alpha=-lr)
                else:
                    new_buf = self._inundate(p, g, buf, group)
                if new_buf is not None:
                    state["momentum_buffer"] = new_buf
        return loss

    def _inundate(self, p, g, buf, group):
        """Search κ for one quantized weight, take the step, record it; returns the new buffer."""
        lr, mom, nest, bits, zp = (group["lr"], group["momentum"], group["nesterov"],
                                   group["w_bits"], group["zero_point"])
        codes = weight_codes(p, bits, zp)
        official = self.form == "official"
        d_official, buf_official = self._direction(g, buf, mom, nest, 1.0) if official else (None, None)

        def candidate(kappa):
            if official:
                return p.add(d_official, alpha=-lr * kappa), buf_official
            d, new_buf = self._direction(g, buf, mom, nest, kappa)
            return p.add(d, alpha=-lr), new_buf

        def crossing(kappa):
            return (weight_codes(candidate(kappa)[0], bits, zp) != codes).float().mean().item()

        rho = group["rho"]
        if rho:
            found = search_kappa(crossing, rho, group["kappa_max"], group["bisect_steps"])
        else:
            found = KappaSearch(1.0, crossing(1.0), 1, False)
        new_p, new_buf = candidate(found.kappa)
        p.copy_(new_p)
        self.last_records.append({"layer": group["layer"], "kappa": found.kappa,
                                  "crossing_fraction": found.crossing_fraction,
                                  "n_evals": found.n_evals, "capped": found.capped})
        return new_buf


def param_groups(student: torch.nn.Module) -> list[dict]:
    """One group per quantized weight on the built-in uniform grid (``layer``, ``w_bits``,
    ``zero_point``: the layer's weight grid, "integral" or "float") and one group for
    everything else (weights of another quantizer, whose crossings of that grid mean nothing,
    and the quantizers' own parameters included).
    """
    from landscape.quant import quantized_layers

    groups, taken = [], set()
    for name, m in quantized_layers(student):
        if m.weight_quantizer is None:
            groups.append({"params": [m.weight], "layer": name, "w_bits": m.w_bits,
                           "zero_point": m.zero_point})
            taken.add(id(m.weight))
    rest = [p for p in student.parameters() if p.requires_grad and id(p) not in taken]
    if rest:
        groups.append({"params": rest, "layer": None, "w_bits": None})
    return groups
