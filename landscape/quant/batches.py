"""How the quantizer's own passes (:func:`~landscape.quant.calibrate`,
:func:`~landscape.quant.frozen_rounding`) call a model on a batch: the convention of the losses.

    batch                                   call
    x (a tensor)                            model(x)
    (x, y, ...) or [x, y, ...]              model(x)
    {"input_ids": ids, ...}                 model(ids), or model(ids, attention_mask=mask) when the
                                            batch has an attention_mask (as
                                            landscape.lm_losses.causal_lm() calls it)
    another dict (no input_ids)             model(**batch)

``call=`` replaces it: any ``call(model, batch)`` that runs the forward pass (e.g.
``lambda m, b: m(**b)`` for a model whose loss is ``hf_loss()``). Tensors are moved to the
model's device first.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from landscape.quant.errors import QuantizerError

Call = Callable[[nn.Module, Any], Any]


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (in a tuple, list or dict) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def key_tensor(batch: Any, where: str) -> torch.Tensor:
    """The tensor a batch is recognised by: x, ``input_ids``, or a dict's first tensor."""
    if isinstance(batch, Mapping):
        x = batch.get("input_ids", next((v for v in batch.values() if isinstance(v, torch.Tensor)), None))
    else:
        x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise QuantizerError(f"{where}: a batch must be x, (x, y, ...) or a dict of tensors such as "
                             f"{{'input_ids': ...}}, got {type(batch).__name__}")
    return x


def call_model(model: nn.Module, batch: Any, where: str, call: Call | None = None) -> Any:
    """Run ``model`` on ``batch`` by the convention of the module docstring (or ``call``)."""
    if call is not None:
        return call(model, batch)
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            return model(**batch)
        mask = batch.get("attention_mask")
        if mask is None:
            return model(batch["input_ids"])
        try:
            return model(batch["input_ids"], attention_mask=mask)
        except TypeError as exc:
            if "attention_mask" not in str(exc):
                raise
            raise QuantizerError(f"{where}: {type(model).__name__}.forward takes no attention_mask; pass "
                                 f"call=lambda m, b: m(b['input_ids']) (or drop the mask from the batches)") from None
    return model(key_tensor(batch, where))
