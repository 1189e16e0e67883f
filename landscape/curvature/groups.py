r"""Parameter groups for per-block curvature: which parameters (and which slices of them) form a view.

A transformer user thinks in blocks -- the attention and the MLP of block i -- and in the q, k
and v projections inside one attention, not in modules. :meth:`CurvatureOperator.groups`
turns that into diagonal blocks of the operator (views sharing its cached graph, like
:meth:`~CurvatureOperator.layers`), from a grouping given as

* a **regular expression** searched in each parameter name; the groups it captures, joined by
  ``"."``, name the view (the whole match when it captures nothing):
  ``r"blocks\.(\d+)\.(attn|mlp)"`` gives ``{"0.attn": ..., "0.mlp": ..., "1.attn": ...}``;
  parameters it does not match belong to no view;
* a **list of module prefixes**: one view per prefix with every parameter under it
  (``"blocks.0"`` takes ``blocks.0.*``, not ``blocks.01.*``); a parameter may be in several.

With ``qkv=True`` each view that holds a packed q/k/v projection also gets its three parts as
views ``"<view>.q"``, ``"<view>.k"``, ``"<view>.v"`` (in addition to the whole view): a view over
a slice of a parameter, the rows (or columns) of that projection and of its bias. Packed
projections are recognised by name, and cut by shape (a 2-D weight along the dimension that is
three times the other, a bias along its length; any other shape is left whole):

* ``*.in_proj_weight`` (3E, E) and ``*.in_proj_bias`` (3E,) of ``nn.MultiheadAttention``:
  q, k, v are the thirds along dimension 0;
* ``*.c_attn.weight`` (E, 3E) and ``*.c_attn.bias`` (3E,) of Hugging Face GPT-2's ``Conv1D``
  (its weight is stored as (in, out)): thirds along dimension 1 of the weight, 0 of the bias.

The views are additive to their group: a table of groups with ``qkv=True`` counts the packed
parameters twice (in ``"0.attn"`` and in its q, k, v).

A slice's diagonal block is ``P H Pᵀ`` with P selecting those coordinates: a product with it
pads the vector with zeros to the whole parameter and reads back the slice's rows, through the
same cached graph. Traces of the q, k and v views add up to the trace of the packed parameter.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from .errors import CurvatureError

__all__ = ["group_names", "packed_cuts", "Cut"]

#: (dim, start, length): the slice ``t.narrow(dim, start, length)`` of a parameter
Cut = tuple[int, int, int]

_PACKED = ("in_proj_weight", "in_proj_bias", "c_attn.weight", "c_attn.bias")  # name suffixes


def group_names(names: Sequence[str], spec: str | re.Pattern | Sequence[str]) -> dict[str, list[str]]:
    """``{view name: [parameter names]}`` for a regex or a list of module prefixes (see the module)."""
    if isinstance(spec, (str, re.Pattern)):
        try:
            pat = re.compile(spec) if isinstance(spec, str) else spec
        except re.error as exc:
            raise CurvatureError(f"groups({spec!r}): not a regular expression ({exc}); give a regex such as "
                                 r"r'blocks\.(\d+)\.(attn|mlp)' or a list of module prefixes") from None
        out: dict[str, list[str]] = {}
        for n in names:
            m = pat.search(n)
            if m is None:
                continue
            key = ".".join(g for g in m.groups() if g is not None) if pat.groups else m.group(0)
            out.setdefault(key or m.group(0), []).append(n)
        if not out:
            raise CurvatureError(f"groups({pat.pattern!r}) matches none of this operator's parameters "
                                 f"(e.g. {list(names[:4])}); the regex is searched in each parameter name")
        return out
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(p, str) for p in spec):
        out = {}
        for prefix in spec:
            p = prefix.rstrip(".")
            got = [n for n in names if n == p or n.startswith(p + ".")]
            if not got:
                raise CurvatureError(f"groups: the prefix {prefix!r} names no parameter of this operator "
                                     f"(e.g. {list(names[:4])})")
            out[prefix] = got
        return out
    raise CurvatureError(f"groups(...) takes a regex string or a non-empty list of module prefixes, got {spec!r}")


def packed_cuts(name: str, shape: torch.Size | tuple[int, ...]) -> dict[str, Cut] | None:
    """``{"q": cut, "k": cut, "v": cut}`` for a packed q/k/v parameter (see the module), else None.

    A 1-D bias is cut along its length (3E); a 2-D weight along the dimension that is three times
    the other (so a Conv1D (E, 3E) and a Linear (3E, E) are both cut right); anything else is not packed.
    """
    if not any(name == s or name.endswith("." + s) for s in _PACKED):
        return None
    shape = tuple(shape)
    if len(shape) == 1 and shape[0] % 3 == 0:
        d = 0
    elif len(shape) == 2 and shape[0] == 3 * shape[1]:
        d = 0
    elif len(shape) == 2 and shape[1] == 3 * shape[0]:
        d = 1
    else:
        return None
    n = shape[d] // 3
    return {tag: (d, i * n, n) for i, tag in enumerate("qkv")}
