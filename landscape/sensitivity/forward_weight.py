r"""The weight a quantized layer uses in its forward pass, for any quantizer.

A quantized layer ``m`` of a student computes with a fake-quantized weight ŵ = q(w) rather than
its latent float weight ``m.weight``. Which code computes ŵ depends on the quantizer; this
module finds it, in this order:

1. ``m.quantized_weight()`` -- the quantizer interface of :mod:`landscape.quant` (every built-in
   weight quantizer, and any ``Cls(bits)`` plugged in through ``quantize_model(weight=Cls)``);
2. a fake-quant module held by the layer and applied to its weight -- the first of the
   attributes :data:`QUANTIZER_ATTRIBUTES` that is callable: ``weight_quantizer``, ``wq``,
   ``weight_fake_quant`` (torch.ao's QAT modules), ``quantizer``; ŵ = that module(``m.weight``);
3. a ``torch.nn.utils.parametrize`` parametrization of ``weight``: ``m.weight`` already *is*
   the forward value.

A layer with none of these is not a quantized weight layer. ŵ is returned detached.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

__all__ = ["QUANTIZER_ATTRIBUTES", "forward_weight", "quantized_weights"]

#: Attribute names under which a foreign quantized layer may hold its weight quantizer.
QUANTIZER_ATTRIBUTES = ("weight_quantizer", "wq", "weight_fake_quant", "quantizer")


@torch.no_grad()
def forward_weight(module: nn.Module) -> torch.Tensor | None:
    """ŵ, the weight ``module`` uses in its forward pass (detached), or None when it has no
    weight quantizer (see the module docstring for how it is found)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    if callable(getattr(module, "quantized_weight", None)):
        return module.quantized_weight().detach().clone()
    for attr in QUANTIZER_ATTRIBUTES:
        q = getattr(module, attr, None)
        if isinstance(q, nn.Module) or (callable(q) and not isinstance(q, torch.Tensor)):
            return q(weight).detach().clone()
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return weight.detach().clone()
    return None


def quantized_weights(quantized: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(layer name, ŵ)`` of every quantized weight layer of ``quantized``, in module order."""
    for name, module in quantized.named_modules():
        w_hat = forward_weight(module)
        if w_hat is not None:
            yield name, w_hat
