"""Functional activation calls read from the source: the fallback of
:func:`~landscape.quant.coverage.activation_sites` when torch.fx cannot trace a model.

torch.fx fails on ordinary language-model code (``torch.ones(T, T)`` with T from
``x.size(1)``: a size that is a proxy while tracing). The listing it gave of functional
activation calls (``F.gelu(h)`` inside a forward) is then read from the source instead: the
``forward`` of every module class of the model that is not torch's own (torch.nn's modules are
leaves for fx too) and not itself an activation module, parsed with :mod:`ast`, and every call
of a name in :data:`~landscape.quant.coverage.FUNCTIONAL_ACTIVATIONS` (``F.gelu``,
``torch.nn.functional.silu``, ``torch.tanh``, a bare ``gelu`` imported by name) or of a tensor
method in :data:`~landscape.quant.coverage.ACTIVATION_METHODS` (``x.relu()``) is listed with its
class, file and line, and the modules of that class. What it reads is the source, not the
calls that run: a call in a branch the forward never takes is listed too, and a call made in
a helper function outside ``forward`` is not.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap

from torch import nn

from landscape.quant.coverage import ACTIVATION_METHODS, FUNCTIONAL_ACTIVATIONS, float_activation

_NAMES = {label.split(".")[-1] for label in FUNCTIONAL_ACTIVATIONS.values()}
_NAMESPACES = {"F", "functional", "torch"}


def _label(call: ast.Call) -> str | None:
    """'F.gelu', 'torch.tanh', 'gelu' or 'Tensor.relu()' for an activation call, else None."""
    f = call.func
    if isinstance(f, ast.Name) and f.id in _NAMES:
        return f.id
    if not isinstance(f, ast.Attribute):
        return None
    base = f.value
    if f.attr in _NAMES and isinstance(base, (ast.Name, ast.Attribute)):
        head = base.id if isinstance(base, ast.Name) else base.attr
        if head in _NAMESPACES:
            return f"{'F' if head == 'functional' else head}.{f.attr}"
    if f.attr in ACTIVATION_METHODS and not call.args:
        return f"Tensor.{f.attr}()"
    return None


def source_sites(model: nn.Module) -> tuple[list[str], list[str]]:
    """(functional activation calls found in the forwards' source, the classes whose source
    could not be read). Each call as 'F.gelu in `blocks.0.mlp`, `blocks.1.mlp` (MLP.forward, lm.py:42)'."""
    owners: dict[type, list[str]] = {}
    for name, m in model.named_modules():
        cls = type(m)
        if cls.__module__.startswith("torch.") or float_activation(m):
            continue
        owners.setdefault(cls, []).append(name)
    found, unread = [], []
    for cls, names in owners.items():
        forward = getattr(cls, "forward", None)
        try:
            lines, first = inspect.getsourcelines(forward)
            tree = ast.parse(textwrap.dedent("".join(lines)))
            path = os.path.basename(inspect.getsourcefile(forward) or "?")
        except (OSError, TypeError, SyntaxError):
            unread.append(cls.__name__)
            continue
        shown = ", ".join(f"`{n}`" if n else "the model's forward" for n in names[:3]) \
            + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        owner = getattr(forward, "__qualname__", f"{cls.__name__}.forward")
        calls = sorted((first + node.lineno - 1, label) for node in ast.walk(tree)
                       if isinstance(node, ast.Call) and (label := _label(node)) is not None)
        found += [f"{label} in {shown} ({owner}, {path}:{line})" for line, label in calls]
    return found, unread
