r"""Per-group weight statistics: the groups of GPTQ/AWQ-style LLM quantizers.

A weight is read as rows, one per output channel: W of shape (out, n), n the input dimension
(a Linear's (out, in); a Conv2d kernel (out, in, kh, kw) flattened to (out, in·kh·kw), in
that memory order; GPT-2's ``Conv1D``, stored (in, out), is transposed by the layer before
its quantizer sees it). With a group size g, row c splits into G = ⌈n/g⌉ groups of g
consecutive inputs,

    group j of row c = W[c, j·g : min((j+1)·g, n)],

each with its own statistic (min and max for the uniform grid, mean|w| for LSQ's initial
step). **When g does not divide n, the last group of every row is shorter** (its n − (G−1)·g
inputs, with their own min and max) — the column blocks GPTQ walks, and the same as padding
the last group with values that do not change its range. g ≥ n gives one group per row:
exactly the per-channel quantizer.

Statistics come back expanded to W's full shape (every weight holds its group's value), so
the per-element arithmetic of :mod:`.functional` applies unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from landscape.quant.errors import QuantizerError


def check_group_size(group_size: Any, argument: str = "group_size") -> int | None:
    """``group_size`` as a positive int, or None (per channel); else a :class:`QuantizerError`."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise QuantizerError(f"quantize_model: {argument} = {group_size!r}; expected a positive integer "
                             f"(inputs per group, e.g. 32, 64, 128) or None (one scale per output channel)")
    return group_size


def rows(w: torch.Tensor) -> torch.Tensor:
    """W as (out, n): one row per output channel."""
    return w.reshape(w.shape[0], -1)


def n_groups(n: int, group_size: int) -> int:
    """G = ⌈n / g⌉ groups per row."""
    return math.ceil(n / group_size)


def _grouped(w: torch.Tensor, group_size: int, fill: float) -> torch.Tensor:
    """(out, G, g): the rows split in groups, the last one padded with ``fill``."""
    r = rows(w)
    n = r.shape[1]
    pad = n_groups(n, group_size) * group_size - n
    if pad:
        r = torch.nn.functional.pad(r, (0, pad), value=fill)
    return r.reshape(r.shape[0], -1, group_size)


def expand(per_group: torch.Tensor, like: torch.Tensor, group_size: int) -> torch.Tensor:
    """A (out, G) tensor of per-group values expanded to ``like``'s shape."""
    n = rows(like).shape[1]
    return per_group.repeat_interleave(group_size, dim=1)[:, :n].reshape(like.shape)


def group_min_max(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of each weight's group, both of w's shape."""
    lo = _grouped(w, group_size, math.inf).amin(dim=2)
    hi = _grouped(w, group_size, -math.inf).amax(dim=2)
    return expand(lo, w, group_size), expand(hi, w, group_size)


def group_sizes(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(G,) the number of inputs in each group of a row (g, …, g, and the remainder last)."""
    n = rows(w).shape[1]
    sizes = torch.full((n_groups(n, group_size),), group_size, dtype=torch.long)
    sizes[-1] = n - (len(sizes) - 1) * group_size
    return sizes


def group_abs_mean(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, G) mean |w| over each group (its own inputs only)."""
    total = _grouped(w.abs(), group_size, 0.0).sum(dim=2)
    return total / group_sizes(w, group_size).to(device=w.device, dtype=w.dtype)
