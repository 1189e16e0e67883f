"""Curvature engine: a Hessian linear operator and estimators on it.

The engine sees only ``(model, loss_fn, batches)``; it knows nothing about quantization or
training. Estimators (trace, eigenpairs, density) work on any object with ``@`` and ``shape``.

    from landscape.curvature import Hessian
    H = Hessian(model, loss_fn, batches)          # params=None: all trainable parameters
    H @ v, H.trace(), H.eigenpairs(k=1), H.density()
"""

from .errors import CurvatureError, CurvatureWarning
from .gradients import gradient, gradient_cosine
from .hessian import Hessian
from .hutchinson import hutchinson
from .hutchpp import hutchpp
from .lanczos import eigsh, lanczos, lanczos_tridiagonal
from .params import resolve_params
from .power import power_iteration
from .results import Eigenpairs, SpectralDensity, TraceEstimate
from .slices import loss_slice, loss_surface, mean_loss, random_direction
from .slq import slq

__all__ = [
    "Hessian",
    "gradient",
    "gradient_cosine",
    "loss_slice",
    "loss_surface",
    "mean_loss",
    "random_direction",
    "TraceEstimate",
    "Eigenpairs",
    "SpectralDensity",
    "hutchinson",
    "hutchpp",
    "power_iteration",
    "lanczos",
    "lanczos_tridiagonal",
    "eigsh",
    "slq",
    "resolve_params",
    "CurvatureError",
    "CurvatureWarning",
]
