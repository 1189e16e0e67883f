r"""The quantizer interface: what ``quantize_model(..., weight=, act=)`` accepts, and how a
quantizer module is found, marked and asked for its offset.

A quantizer is any class or factory ``Cls`` called as ``Cls(bits)`` that returns an
``nn.Module`` mapping a tensor to its fake-quantized value, with its straight-through
estimator inside (learnable parameters allowed):

    class MyQuant(nn.Module):
        def __init__(self, bits): ...
        def forward(self, x): return x + (q(x) - x).detach()

``weight=`` / ``act=`` take such a class, a built-in name (:data:`BUILTIN_WEIGHT`,
:data:`BUILTIN_ACT`) or, as in recipes, a string ``"package.module:Name"`` that is imported.

Optional parts of the interface, used when present:

* ``offset(x) -> Tensor | None``: the detached rounding offset c = q(x) − x (None: pass
  through). Without it the offset is computed as ``(q(x) − x).detach()`` under no_grad.
* ``calibrating`` (bool attribute) on an activation quantizer: set by
  :func:`~landscape.quant.calibrating` (the trainer's warm-up, :func:`~landscape.quant.calibrate`)
  when the quantizer sets ranges from data.

Every quantizer module placed by ``quantize_model`` is marked with its role (``"weight"`` or
``"act"``, the private attribute ``_landscape_quantizer``) and, when it has parameters, as
*auxiliary* for the curvature engine (:func:`landscape.curvature.mark_auxiliary`): its
parameters train with the student but are not curvature parameters unless named.
"""

from __future__ import annotations

import importlib
import inspect
import re
from fnmatch import fnmatchcase
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from landscape.quant.errors import QuantizerError

MIN_BITS, MAX_BITS = 2, 16
ROLE = "_landscape_quantizer"

#: built-in names -> "module:Class" inside landscape.quant.quantizers (imported on demand)
BUILTIN_WEIGHT = {"uniform": "uniform:UniformWeight", "lsq": "lsq:LSQ", "dorefa": "dorefa:DoReFaWeight",
                  "pow2": "pow2:Pow2Weight", "torch_ao": "torch_ao:TorchAOWeight"}
BUILTIN_ACT = {"uniform": "uniform:UniformAct", "lsq": "lsq:LSQAct", "pact": "pact:PACT",
               "torch_ao": "torch_ao:TorchAOAct"}

Factory = Callable[[int], nn.Module]


def check_bits(bits: Any, name: str) -> int:
    """``bits`` as an int in [2, 16]; anything else is a :class:`QuantizerError` naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantizerError(f"quantize_model: {name} = {bits!r} is out of range; bits must be an integer "
                             f"from {MIN_BITS} to {MAX_BITS}" + (" (or None: weights only)" if name == "a_bits" else ""))
    return bits


def _import(spec: str, argument: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise QuantizerError(f"{argument} = {spec!r}: a quantizer is a built-in name or 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise QuantizerError(f"{argument} = {spec!r}: cannot import {module_name} ({exc}); put the module on "
                             f"PYTHONPATH or install its package") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise QuantizerError(f"{argument} = {spec!r}: module {module_name} has no {attr!r}") from None


GROUPED = re.compile(r"(\w+)_g(\d+)")


def split_group(spec: Any) -> tuple[Any, int | None]:
    """``("uniform", 64)`` for a built-in weight name with a group suffix (``"uniform_g64"``),
    else ``(spec, None)``."""
    m = GROUPED.fullmatch(spec) if isinstance(spec, str) else None
    return (m[1], int(m[2])) if m and m[1] in BUILTIN_WEIGHT else (spec, None)


def with_group_size(factory: Factory, group_size: int, argument: str) -> Factory:
    """``factory`` called with ``group_size=``; a :class:`QuantizerError` if it takes none."""
    try:
        takes = "group_size" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes = False
    if not takes:
        raise QuantizerError(f"quantize_model: {argument} = {spec_name(factory)} takes no group_size; per-group "
                             f"scales come with 'uniform' and 'lsq' (or a class whose __init__ has a group_size= "
                             f"argument); use group_size=None for it")
    return partial(factory, group_size=group_size)


def resolve_quantizer(spec: Any, role: str, argument: str | None = None) -> Factory:
    """The factory for ``spec``: a built-in name (a weight name with a group suffix,
    ``"lsq_g64"``, too), ``"package.module:Name"`` or a callable.

    ``role`` is ``"weight"`` or ``"act"``; ``argument`` names the argument in messages.
    """
    argument = argument or role
    builtins = BUILTIN_WEIGHT if role == "weight" else BUILTIN_ACT
    base, group_size = split_group(spec) if role == "weight" else (spec, None)
    if group_size is not None:
        from landscape.quant.groups import check_group_size

        check_group_size(group_size, f"{argument} = {spec!r}: group size")
        return with_group_size(resolve_quantizer(base, role, argument), group_size, argument)
    if isinstance(spec, str):
        if spec in builtins:
            return _import(f"landscape.quant.quantizers.{builtins[spec]}", argument)
        if ":" not in spec:
            other = BUILTIN_ACT if role == "weight" else BUILTIN_WEIGHT
            why = f" ({spec!r} quantizes {'activations' if role == 'weight' else 'weights'} only)" \
                if spec in other else ""
            raise QuantizerError(f"{argument} = {spec!r} is not a built-in {role} quantizer{why}; use one of "
                                 f"{', '.join(builtins)}, a class, or 'package.module:Name'")
        spec = _import(spec, argument)
    if not callable(spec):
        raise QuantizerError(f"{argument} = {spec!r}: a quantizer is a built-in name, 'package.module:Name' or "
                             f"a class/factory called as Cls(bits)")
    return spec


def is_builtin_uniform(spec: Any, role: str) -> bool:
    """True for the default quantizer (by name or class): the code path of the official grid."""
    if isinstance(spec, str):
        return spec == "uniform"
    from landscape.quant.quantizers.uniform import UniformAct, UniformWeight

    return spec is (UniformWeight if role == "weight" else UniformAct)


def spec_name(spec: Any) -> str:
    """A short printable name of a quantizer spec (for reports and messages)."""
    if isinstance(spec, str):
        return spec
    return getattr(spec, "__qualname__", None) or type(spec).__name__


def build(factory: Factory, bits: int, role: str, argument: str, like: torch.Tensor | None) -> nn.Module:
    """``factory(bits)``, checked to be an nn.Module, moved to ``like``'s device and dtype, marked
    with its role and (when it has parameters) as auxiliary for the curvature engine."""
    from landscape.curvature.params import mark_auxiliary

    try:
        module = factory(bits)
    except (TypeError, ValueError) as exc:
        raise QuantizerError(f"{argument} = {spec_name(factory)}: calling it as {spec_name(factory)}({bits}) "
                             f"failed ({type(exc).__name__}: {exc}); a quantizer is called with the bit width "
                             f"alone") from None
    if not isinstance(module, nn.Module):
        raise QuantizerError(f"{argument} = {spec_name(factory)}: {spec_name(factory)}({bits}) returned a "
                             f"{type(module).__name__}, not an nn.Module mapping a tensor to its fake-quantized value")
    if like is not None and like.is_floating_point():
        module.to(device=like.device, dtype=like.dtype)
    setattr(module, ROLE, role)
    if any(True for _ in module.parameters()):
        mark_auxiliary(module)
    return module


def role_of(module: nn.Module) -> str | None:
    """``"weight"``, ``"act"`` or None: what a module placed by quantize_model quantizes."""
    return getattr(module, ROLE, None)


@torch.no_grad()
def offset_of(quantizer: nn.Module, x: torch.Tensor, forward: Callable | None = None) -> torch.Tensor | None:
    """The detached offset c = q(x) − x of any quantizer of the interface (None: pass-through).

    The quantizer's own ``offset(x)`` when it has one, else ``q(x) − x`` under no_grad with
    calibration switched off for the call (no range is updated); ``forward`` replaces the call
    ``quantizer(x)`` (e.g. the class's forward while an instance's is overridden)."""
    own = getattr(quantizer, "offset", None)
    if callable(own):
        return own(x)
    before = getattr(quantizer, "calibrating", None)
    if before is not None:
        quantizer.calibrating = False
    try:
        return ((forward or quantizer)(x) - x).detach()
    finally:
        if before is not None:
            quantizer.calibrating = before


def select_layers(names: Sequence[str], include: Any, exclude: Any) -> tuple[set[str], set[str]]:
    """``(chosen, excluded)`` among weight-layer ``names`` of the float model.

    ``include`` / ``exclude``: None, a string or a list of strings, each an exact layer name or
    a shell-style pattern (``fnmatch``: ``*``, ``?``, ``[seq]``; ``"layer1.*"``). A pattern
    that matches no layer is a :class:`QuantizerError` listing the layers.
    """
    def patterns(value: Any, argument: str) -> list[str] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        try:
            items = list(items)
        except TypeError:
            items = None
        if not items or not all(isinstance(p, str) for p in items):
            raise QuantizerError(f"quantize_model: {argument} = {value!r}; expected a layer name, a shell-style "
                                 f"pattern ('layer1.*') or a non-empty list of them")
        for p in items:
            if not any(fnmatchcase(n, p) for n in names):
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise QuantizerError(f"quantize_model: {argument} pattern {p!r} matches no Conv2d/Linear layer "
                                     f"(nor attention, nor Conv1D) of the model (layers: {shown})")
        return items

    inc, exc = patterns(include, "include"), patterns(exclude, "exclude")
    chosen = {n for n in names if inc is None or any(fnmatchcase(n, p) for p in inc)}
    excluded = {n for n in chosen if exc is not None and any(fnmatchcase(n, p) for p in exc)}
    return chosen - excluded, set(names) - (chosen - excluded)


def quantizer_modules(model: nn.Module, role: str) -> Iterable[tuple[str, nn.Module]]:
    """``(name, module)`` of every quantizer of ``role`` placed in ``model`` by quantize_model."""
    return [(n, m) for n, m in model.named_modules() if role_of(m) == role]
