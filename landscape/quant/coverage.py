"""Where a model calls its activations: the call sites :func:`~landscape.quant.quantize_model`
needs to give each ReLU call its own quantizer and to name what it cannot quantize.

torch.fx symbolic tracing, not an example input: the traced graph lists every call of every
leaf module (a ReLU module called twice is two ``call_module`` nodes, in call order) and every
functional call (``F.relu``, ``torch.relu``, ``x.relu()``), with the enclosing module and the
source line, without running the model and without the user having to supply data. Tracing
fails on data-dependent Python control flow; :func:`activation_sites` then returns the error
text and the caller falls back to one quantizer per module, with a warning.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)  # the official code quantizes after both
FUNCTIONAL_ACTIVATIONS = {F.relu: "F.relu", F.relu_: "F.relu_", torch.relu: "torch.relu",
                          torch.relu_: "torch.relu_", F.relu6: "F.relu6"}
ACTIVATION_METHODS = ("relu", "relu_")

_TORCH_DIR = os.path.dirname(torch.__file__)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


@dataclass
class ActivationSites:
    """``modules``: qualified name of each activation module -> its call sites in call order;
    ``functional``: the functional activation calls (which no module quantizer can see)."""

    modules: dict[str, list[str]] = field(default_factory=dict)
    functional: list[str] = field(default_factory=list)


def _where(node: fx.Node, skip_leaf: bool, root: str) -> str:
    """'in `layer1.0` (BasicBlock.forward, resnet.py:42)' for a traced node."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if skip_leaf and stack:
        stack = stack[:-1]
    owner, cls = (stack[-1][0], stack[-1][1].__name__) if stack else ("", root)
    line = ""
    for path, lineno, _ in _FRAME.findall(node.stack_trace or ""):
        if not os.path.abspath(path).startswith(_TORCH_DIR):
            line = f", {os.path.basename(path)}:{lineno}"
    owner = f"`{owner}`" if owner else "the model's forward"
    return f"in {owner} ({cls}.forward{line})"


def activation_sites(model: nn.Module) -> ActivationSites | str:
    """The activation call sites of ``model`` from a torch.fx trace, or the error text when
    the model cannot be traced. The model is not run and not changed."""
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception as err:  # any tracing failure: the caller falls back and says why
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    modules = dict(model.named_modules())
    sites, root = ActivationSites(), type(model).__name__
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), ACTIVATION_MODULES):
            sites.modules.setdefault(node.target, []).append(_where(node, True, root))
        elif node.op == "call_function" and node.target in FUNCTIONAL_ACTIVATIONS:
            sites.functional.append(f"{FUNCTIONAL_ACTIVATIONS[node.target]} " + _where(node, False, root))
        elif node.op == "call_method" and node.target in ACTIVATION_METHODS:
            sites.functional.append(f"Tensor.{node.target}() " + _where(node, False, root))
    return sites
