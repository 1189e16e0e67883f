"""Curvature engine: Hessian, Gauss-Newton and Fisher linear operators and estimators on them.

The engine sees only ``(model, loss_fn, batches)``; it knows nothing about quantization or
training. Estimators (trace, eigenpairs, density) work on any object with ``@`` and ``shape``.

    from landscape.curvature import Hessian, GGN
    H = Hessian(model, loss_fn, batches)          # params=None: all trainable parameters
    H @ v, H.trace(), H.eigenpairs(k=1), H.density()
    H.layers()["conv1"].trace()                   # a diagonal block sharing H's cached graph
    GGN(model, loss_fn, batches).density()        # the same interface, positive semi-definite

Under ``torch.distributed`` (launched by ``torchrun``) ``batches`` are this rank's shard and
every product, gradient and mean loss is over the union of the shards, the same on every rank
(``process_group=``: another group, or ``False`` for none; see :mod:`.reduction`).
"""

from .base import CurvatureOperator
from .errors import CurvatureError, CurvatureWarning
from .estimators import density, eigenpairs, trace
from .factory import CURVATURES, curvature_operator
from .ggn import GGN, EmpiricalFisher, Fisher
from .gradients import gradient, gradient_cosine
from .hessian import Hessian
from .hutchinson import hutchinson
from .hutchpp import hutchpp
from .lanczos import eigsh, lanczos, lanczos_tridiagonal
from .layers import cosine, cosine_rows, layer_of, layer_slices
from .params import auxiliary_ids, mark_auxiliary, resolve_params
from .power import power_iteration
from .reduction import ReductionError, default_process_group
from .results import Eigenpairs, SpectralDensity, TraceEstimate
from .slices import loss_slice, loss_surface, mean_loss, random_direction
from .slq import slq

__all__ = [
    "CurvatureOperator",
    "Hessian",
    "GGN",
    "Fisher",
    "EmpiricalFisher",
    "CURVATURES",
    "curvature_operator",
    "trace",
    "eigenpairs",
    "density",
    "gradient",
    "gradient_cosine",
    "cosine",
    "cosine_rows",
    "layer_of",
    "layer_slices",
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
    "mark_auxiliary",
    "auxiliary_ids",
    "CurvatureError",
    "CurvatureWarning",
    "ReductionError",
    "default_process_group",
]
