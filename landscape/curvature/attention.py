r"""Attention the engine can differentiate twice.

Curvature products differentiate the loss twice: a Hessian-vector product is
``∇_θ (∇_θ L · v)`` (a backward through the graph of a backward), and the Gauss-Newton product's
``J v`` is a backward through the graph of ``Jᵀ u``. PyTorch's fused attention kernels (flash and
memory-efficient ``F.scaled_dot_product_attention``, which ``nn.MultiheadAttention`` and Hugging
Face models call) have a backward but no backward of their backward:
``RuntimeError: derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is
not implemented``. The *math* kernel computes ``softmax(q kᵀ/√d + mask) v`` from ordinary
differentiable operations, so its gradient can be differentiated again, exactly.

:func:`twice_differentiable` is the one context every product, gradient and loss evaluation of
the engine runs under (:meth:`CurvatureOperator._apply`, :func:`gradient`, the slices):

* ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`` -- on CPU and CUDA, whatever backend the
  user enabled outside; the values are those of the fused kernels up to rounding (the same
  maths in another order), first derivatives too;
* a ``RuntimeError: derivative for <op> is not implemented`` raised inside (some other kernel
  without a double backward, e.g. a custom CUDA op or an attention implementation that does
  not go through ``F.scaled_dot_product_attention``) becomes one :class:`CurvatureError`
  naming the op and the fix.

Cost: the math kernel materialises the (B, heads, T, T) attention matrix, where the fused
kernels tile it; the first-order graph the engine keeps is larger by that matrix per layer
(see docs/transformers.md for measured numbers).
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import CurvatureError

__all__ = ["twice_differentiable", "double_backward_error"]

_NOT_IMPLEMENTED = re.compile(r"derivative for (\S+) is not implemented")


def double_backward_error(exc: BaseException) -> CurvatureError | None:
    """The :class:`CurvatureError` for a torch error saying an op has no (double) derivative, else None."""
    m = _NOT_IMPLEMENTED.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if m is None:
        return None
    op = m.group(1)
    return CurvatureError(
        f"{op} cannot be differentiated twice, which a curvature product needs; the engine already runs "
        "F.scaled_dot_product_attention with its math kernel, so this op comes from elsewhere: compute it with "
        "differentiable torch operations (for a Hugging Face model: attn_implementation='eager' or 'sdpa', not "
        "'flash_attention_2'), or restrict params= to the parameters between it and the loss"
    )


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Run attention with the math SDPA kernel; turn a missing double backward into a :class:`CurvatureError`."""
    with sdpa_kernel(SDPBackend.MATH):
        try:
            yield
        except RuntimeError as exc:
            err = double_backward_error(exc)
            if err is None:
                raise
            raise err from exc
