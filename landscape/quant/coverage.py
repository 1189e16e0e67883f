"""Where a model calls its activations: the call sites :func:`~landscape.quant.quantize_model`
needs to give each ReLU call its own quantizer and to name what it cannot quantize.

torch.fx symbolic tracing, not an example input: the traced graph lists every call of every
leaf module (a ReLU module called twice is two ``call_module`` nodes, in call order) and every
functional call (``F.relu``, ``torch.relu``, ``x.relu()``), with the enclosing module and the
source line, without running the model and without the user having to supply data. Tracing
fails on data-dependent Python control flow; :func:`activation_sites` then returns the error
text and the caller falls back to one quantizer per ReLU module and to reading the functional
calls from the source (:mod:`.source_scan`).

Only nn.ReLU / nn.ReLU6 modules get an activation quantizer (after them, as in the official
code). Every other activation -- a module of :data:`FLOAT_ACTIVATION_MODULES` (GELU, SiLU, ...,
and ``transformers.activations``'s) or a functional call of :data:`FUNCTIONAL_ACTIVATIONS` /
:data:`ACTIVATION_METHODS` -- cannot be quantized in place and stays in float;
quantize_model names them all in one warning.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)  # the official code quantizes after both
#: activation modules that get no quantizer (named in quantize_model's warning)
FLOAT_ACTIVATION_MODULES = (nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU,
                            nn.PReLU, nn.RReLU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.GLU,
                            nn.LogSigmoid, nn.Softsign, nn.Tanhshrink)
FUNCTIONAL_ACTIVATIONS = {F.relu: "F.relu", F.relu_: "F.relu_", torch.relu: "torch.relu",
                          torch.relu_: "torch.relu_", F.relu6: "F.relu6", F.gelu: "F.gelu", F.silu: "F.silu",
                          F.mish: "F.mish", F.elu: "F.elu", F.leaky_relu: "F.leaky_relu", F.softplus: "F.softplus",
                          F.hardswish: "F.hardswish", F.hardtanh: "F.hardtanh", F.glu: "F.glu",
                          torch.tanh: "torch.tanh", torch.sigmoid: "torch.sigmoid", F.sigmoid: "F.sigmoid",
                          F.tanh: "F.tanh"}
ACTIVATION_METHODS = ("relu", "relu_", "tanh", "sigmoid")


def float_activation(module: nn.Module) -> bool:
    """An activation module that gets no quantizer: GELU, SiLU, ... (not ReLU/ReLU6), and any
    module of ``transformers.activations`` (GPT-2's NewGELUActivation)."""
    if type(module) in ACTIVATION_MODULES:
        return False
    return isinstance(module, FLOAT_ACTIVATION_MODULES) or type(module).__module__ == "transformers.activations"

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


def _hashable(target) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True


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
        elif node.op == "call_function" and _hashable(node.target) and node.target in FUNCTIONAL_ACTIVATIONS:
            sites.functional.append(f"{FUNCTIONAL_ACTIVATIONS[node.target]} " + _where(node, False, root))
        elif node.op == "call_method" and node.target in ACTIVATION_METHODS:
            sites.functional.append(f"Tensor.{node.target}() " + _where(node, False, root))
    return sites
