"""(e) of ``make bench``: the freshness check every product runs first, as a fraction of one HVP.

Run alone (it is the only part of the bench the freshness check needs)::

    PYTHONPATH=. python benchmarks/freshness.py [--quick] [--threads N]

(``--threads 1`` on a loaded machine: two-thread products starve there and flatter the ratio.)

Rows, each a median over interleaved rounds (HVP, then ten checks), nothing changed so no rebuild:

* the small CNN at batch 256 (the bench's problem), loss ``cross_entropy()``;
* the worst case for the check: a 6.3M-parameter MLP (1024→2048→2048→10, tanh) at batch 8, much
  state and little arithmetic per product; beside it the floor of any check that looks at the
  values (a write through ``.data`` moves no version counter): one bare read of the 25 MB of
  weights (NumPy's ``max``), as a fraction of the same product (the exact check reads them
  and their copy: ``memcmp``);
* the loss walk for a loss that is not a module: a KL to a teacher on the CNN, the teacher
  captured by a closure (walked by :func:`landscape.curvature.state.loss_state` on every check)
  beside the same loss as :func:`landscape.losses.kl_to_teacher` (an ``nn.Module``, no walk),
  and the walk alone: what was weighed against a documented ``H.clear_cache()`` (see
  :mod:`landscape.curvature.state`).
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import cnn_problem  # noqa: E402

from landscape.curvature import Hessian  # noqa: E402
from landscape.curvature.state import loss_state  # noqa: E402
from landscape.losses import cross_entropy, kl_divergence, kl_to_teacher  # noqa: E402


def _worst_problem():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.Tanh(), torch.nn.Linear(2048, 2048),
                              torch.nn.Tanh(), torch.nn.Linear(2048, 10)).eval()
    g = torch.Generator().manual_seed(1)
    return mlp, torch.randn(8, 1024, generator=g), torch.randint(0, 10, (8,), generator=g)


def _closure_kl(teacher: torch.nn.Module, temperature: float) -> Callable:
    """A user's KL loss with the teacher captured by a closure (found only by the loss walk)."""
    def loss(model, batch):
        x = batch[0]
        with torch.no_grad():
            t = teacher(x)
        return kl_divergence(model(x), t, temperature)
    return loss


def _rounds(H: Hessian, rounds: int, extra: dict[str, Callable] | None = None) -> dict[str, float]:
    """Median seconds of ``H @ v``, of the check (``H._core.refresh``, what every product runs first)
    and of each ``extra`` callable, interleaved round by round."""
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0))
    H @ v
    timed = {"hvp": lambda: H @ v, "check": H._core.refresh, **(extra or {})}
    out: dict[str, list[float]] = {k: [] for k in timed}
    for _ in range(rounds):
        for k, f in timed.items():
            n = 1 if k == "hvp" else 10
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            out[k].append((time.perf_counter() - t0) / n)
    assert H.n_rebuilds == 1, "nothing changed, so the check must not rebuild"
    return {k: statistics.median(ts) for k, ts in out.items()}


def bench_freshness(line: Callable[[str], None], summary: dict, rounds: int) -> None:
    """Print section (e) and put ``fresh_cnn``, ``fresh_worst``, ``fresh_read`` and
    ``fresh_walk`` (fractions of one HVP) into ``summary``."""
    line("(e) the freshness check run before every product, as a fraction of one HVP (medians, interleaved)")
    model, x, y = cnn_problem()
    t = _rounds(Hessian(model, cross_entropy(), [(x, y)]), rounds)
    summary["fresh_cnn"] = t["check"] / t["hvp"]
    line(f"    small CNN, batch 256        : check {t['check'] * 1e3:7.3f} ms, HVP {t['hvp'] * 1e3:8.1f} ms "
         f"(check included), check/HVP {100 * summary['fresh_cnn']:.2f} % (target <= 2 %)")

    mlp, xw, yw = _worst_problem()
    weights = [p.detach().numpy() for p in mlp.parameters()]
    t = _rounds(Hessian(mlp, cross_entropy(), [(xw, yw)]), rounds, {"read": lambda: [np.max(a) for a in weights]})
    summary["fresh_worst"] = t["check"] / t["hvp"]
    summary["fresh_read"] = t["read"] / t["hvp"]
    line(f"    6.3M-parameter MLP, batch 8 : check {t['check'] * 1e3:7.3f} ms, HVP {t['hvp'] * 1e3:8.1f} ms "
         f"(check included), check/HVP {100 * summary['fresh_worst']:.2f} % (worst case); its floor, one bare "
         f"read of the 25 MB of weights (max): {t['read'] * 1e3:.3f} ms, {100 * summary['fresh_read']:.2f} % of the HVP")

    torch.manual_seed(1)
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    closure = _closure_kl(teacher, 4.0)
    as_module = _rounds(Hessian(model, kl_to_teacher(teacher, 4.0), [(x, y)]), rounds)
    walked = _rounds(Hessian(model, closure, [(x, y)]), rounds, {"walk": lambda: loss_state(closure, model)})
    summary["fresh_walk"] = walked["walk"] / walked["hvp"]
    line(f"    KL to a teacher, small CNN   : check {as_module['check'] * 1e3:7.3f} ms with kl_to_teacher (a module), "
         f"{walked['check'] * 1e3:7.3f} ms with the teacher in a closure, of which the walk {walked['walk'] * 1e6:.1f} us, "
         f"{100 * summary['fresh_walk']:.3f} % of an HVP ({walked['hvp'] * 1e3:.1f} ms)")


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv[:-1] else 2)
    quick = "--quick" in sys.argv
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | load average {os.getloadavg()[0]:.2f}")
    bench_freshness(print, {}, 3 if quick else 9)
