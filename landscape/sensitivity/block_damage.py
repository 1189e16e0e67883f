r"""Quantization damage per *block* (a set of parameters: a transformer block's attention, its MLP),
measured and predicted: :func:`layer_damage` for groups of weights.

For a block b with parameters P_b, δ_b = (ŵ_p − w_p)_{p ∈ P_b} stacks the differences between
the values the quantized model computes with and the float weights; with L the size-weighted
mean loss of the float model over the batches and only block b's parameters moved:

    measured      L(w + δ_b) − L(w)                            (a direct evaluation)
    first_order   g_b · δ_b
    second_order  ½ δ_bᵀ H_bb δ_b      H_bb: the block's diagonal Hessian block (its cross terms
                                        between the block's own matrices, e.g. q·k, included)
    taylor        first_order + second_order
    trace_proxy   ½ · mean(δ_b²) · tr H_bb                     (HAWQ-V2, Hutchinson, with stderr)

A block of one weight matrix gives exactly :func:`layer_damage`'s row (a test checks it).
The columns are :data:`landscape.sensitivity.COLUMNS`, ``layer`` holding the block's name, so
the tables, claims and allocations of ``landscape compare`` read blocks as they read layers.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from landscape.curvature.batches import as_batches
from landscape.sensitivity.damage import damage_table
from landscape.sensitivity.errors import SensitivityError

__all__ = ["block_damage"]


def block_damage(model: nn.Module, forward: Mapping[str, torch.Tensor], blocks: Mapping[str, Sequence[str]],
                 loss_fn, batches, *, trace_matvecs: int = 64, trace_rtol: float | None = None, seed: int = 0,
                 eval_mode: bool = True) -> pd.DataFrame:
    r"""One row per block: the loss increase of moving that block's parameters alone to their
    quantized values, measured and predicted (formulas in the module docstring).

    ``model``: the float network. ``forward``: ``{parameter name of model: ŵ}``, the value the
    quantized model computes with for each quantized parameter. ``blocks``: ``{block name:
    [parameter names]}``, each name a key of ``forward``; blocks must not share parameters.
    ``loss_fn``, ``batches``: as for :class:`landscape.curvature.Hessian`. ``trace_matvecs`` /
    ``trace_rtol`` / ``seed``: Hutchinson's budget, stopping rule and probe seed for tr H_bb.
    The model is left as it was (weights bit for bit, modes, ``.grad``).
    """
    batches = as_batches(batches)
    params = dict(model.named_parameters())
    seen: set[str] = set()
    for block, names in blocks.items():
        if not names:
            raise SensitivityError(f"block_damage: block {block!r} has no parameters; give it at least one name")
        for n in names:
            if n not in forward or n not in params:
                raise SensitivityError(f"block_damage: block {block!r} names {n!r}, which is not a quantized "
                                       f"parameter of the model (quantized: {', '.join(list(forward)[:8])} …)")
            if tuple(forward[n].shape) != tuple(params[n].shape):
                raise SensitivityError(f"block_damage: {n!r} has shape {tuple(params[n].shape)} in the float model "
                                       f"but {tuple(forward[n].shape)} quantized; pass the model it was made from")
            if n in seen:
                raise SensitivityError(f"block_damage: {n!r} belongs to two blocks; each parameter to one")
            seen.add(n)
    names = [n for names in blocks.values() for n in names]
    delta = {n: forward[n].to(device=params[n].device, dtype=params[n].dtype) - params[n].detach() for n in names}

    return damage_table(model, params, delta, blocks, loss_fn, batches, trace_matvecs=trace_matvecs,
                        trace_rtol=trace_rtol, seed=seed, eval_mode=eval_mode, where="block_damage", what="values")
