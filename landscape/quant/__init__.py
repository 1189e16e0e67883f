"""Fake quantization of a teacher into a student (see :mod:`.functional` for the arithmetic).

    student = quantize_model(teacher, w_bits=4, a_bits=4)   # deep copy, eval mode
    student = quantize_model(teacher, 4, None, weight="lsq") # weights only, another quantizer
    coverage_report(student)  -> which weight tensors were quantized, which skipped and why
    calibrate(student, batches)                               # PTQ: activation ranges
    quantized_layers(student) -> [(name, QuantConv2d | QuantLinear)]
    integer_codes(student)    -> {name: LongTensor}
    check_dequantization(student) -> per-layer report; raises QuantizationError on failure
    with frozen_rounding(student, batches): ...   # rounding offsets held fixed at θ
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings
from collections import Counter, OrderedDict
from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn

from landscape.quant import functional
from landscape.quant.batches import Call, call_model, to_device
from landscape.quant.coverage import ACTIVATION_MODULES, activation_sites
from landscape.quant.coverage_report import ATTR as _COVERAGE
from landscape.quant.coverage_report import EXCLUDED, CoverageReport, coverage_report, skip_reason
from landscape.quant.errors import FrozenRoundingError, QuantizationError, QuantizationWarning, QuantizerError
from landscape.quant.frozen import frozen_rounding
from landscape.quant.functional import (check_zero_point, dequantize, fake_quant_weight, qrange, quantize,
                                        weight_codes, weight_qparams)
from landscape.quant.interface import (BUILTIN_ACT, BUILTIN_WEIGHT, ROLE, build, check_bits, is_builtin_uniform,
                                       resolve_quantizer, role_of, select_layers, spec_name)
from landscape.quant.groups import check_group_size
from landscape.quant.modules import (ActQuant, ActQuantPerCall, CallCounters, QuantConv2d, QuantLinear, _QuantWeight,
                                     _to_quant, quant_class)
from landscape.quant.targets import Target, weight_targets, weight_tensors

__all__ = ["quantize_model", "quantized_layers", "integer_codes", "act_quantizers", "coverage_report",
           "CoverageReport", "calibrating", "calibrate", "check_dequantization", "frozen_rounding",
           "QuantizationError", "QuantizationWarning", "FrozenRoundingError", "QuantizerError",
           "BUILTIN_WEIGHT", "BUILTIN_ACT",
           "QuantConv2d", "QuantLinear", "ActQuant", "ActQuantPerCall", "functional", "weight_codes",
           "weight_qparams", "fake_quant_weight", "quantize", "dequantize", "qrange"]


def _act_quant(a_bits: int, act_momentum: float, sites: list[str], like: torch.Tensor | None,
               factory=None) -> nn.Module:
    """One activation quantizer, or one per call site; in the model's dtype and on its device.

    ``factory`` None: the built-in ActQuant (EMA range, ``act_momentum``); else ``factory(a_bits)``."""
    def one() -> nn.Module:
        if factory is not None:
            return build(factory, a_bits, "act", "act", like)
        q = ActQuant(a_bits, act_momentum)
        setattr(q, ROLE, "act")
        return q

    quant = ActQuantPerCall([one() for _ in sites], sites) if len(sites) > 1 else one()
    if factory is None and like is not None and like.is_floating_point():
        quant.to(device=like.device, dtype=like.dtype)
    return quant


def _call_sites(student: nn.Module) -> dict[int, list[str]]:
    """id(activation module) -> its call sites; the warnings for what cannot be quantized.

    An activation module held under two names gets one quantizer per holder (no site list).
    """
    sites = activation_sites(student)
    if isinstance(sites, str):
        warnings.warn(f"quantize_model: torch.fx cannot trace {type(student).__name__} ({sites}), so activation "
                      f"call sites were not checked: each nn.ReLU module gets one quantizer shared by all its "
                      f"calls, and functional activations (F.relu) are not quantized", QuantizationWarning,
                      stacklevel=3)
        return {}
    if sites.functional:
        warnings.warn(f"quantize_model: {len(sites.functional)} functional activation(s) are not quantized "
                      f"(only nn.ReLU / nn.ReLU6 modules get an activation quantizer): "
                      + "; ".join(sites.functional) + ". Use an nn.ReLU module there to quantize it.",
                      QuantizationWarning, stacklevel=3)
    holders = Counter(id(c) for parent in student.modules() for c in parent._modules.values() if c is not None)
    return {id(m): sites.modules.get(n, [])[:1 if holders[id(m)] > 1 else None]
            for n, m in student.named_modules()}


def _coverage(student: nn.Module, targets: dict[str, Target], chosen: set[str], weight, act, w_bits: int,
              a_bits: int | None) -> CoverageReport:
    """Which weight tensors quantize_model converts (:mod:`.targets`); before conversion."""
    report = CoverageReport(weight if isinstance(weight, str) else spec_name(weight),
                            None if a_bits is None else spec_name(act), w_bits, a_bits)
    for name, m in student.named_modules():
        for param in weight_tensors(m):
            tensor = f"{name}.{param}" if name else param
            if name in chosen and param in targets[name].params:
                report.covered.append(tensor)
            elif name in targets:
                report.skipped[tensor] = EXCLUDED
            else:
                report.skipped[tensor] = skip_reason(m, m._parameters[param])
    return report


def _weight_factory(weight, group_size: int | None, weight_zero_point: str):
    """(factory or None for the built-in per-channel path, group size, the name reported)."""
    name = weight if isinstance(weight, str) else spec_name(weight)
    if isinstance(weight, str) and (m := re.fullmatch(r"(\w+)_g(\d+)", weight)) and m[1] in BUILTIN_WEIGHT:
        if group_size is not None and group_size != int(m[2]):
            raise QuantizerError(f"quantize_model: weight = {weight!r} says group_size {m[2]} but group_size = "
                                 f"{group_size}; give one of them")
        weight, group_size = m[1], check_group_size(int(m[2]), f"weight = {weight!r}: group size")
    elif group_size is not None:
        name = f"{name}_g{group_size}"
    if group_size is None:
        return (None if is_builtin_uniform(weight, "weight") else resolve_quantizer(weight, "weight")), None, name
    if is_builtin_uniform(weight, "weight"):
        from landscape.quant.quantizers.uniform import UniformWeight

        return partial(UniformWeight, zero_point=weight_zero_point, group_size=group_size), group_size, name
    factory = resolve_quantizer(weight, "weight")
    try:
        takes = "group_size" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes = False
    if not takes:
        raise QuantizerError(f"quantize_model: weight = {spec_name(factory)} takes no group_size; per-group scales "
                             f"come with 'uniform' and 'lsq' (or a class whose __init__ has a group_size= "
                             f"argument); use group_size=None for it")
    return partial(factory, group_size=group_size), group_size, name


def quantize_model(model: nn.Module, w_bits: int, a_bits: int | None, act_momentum: float = 0.9, *,
                   weight="uniform", act="uniform", weight_zero_point: str = "integral",
                   group_size: int | None = None, include=None, exclude=None) -> nn.Module:
    """A fake-quantized deep copy of ``model``, in eval mode.

    * Every nn.Conv2d and nn.Linear (first and last included; exactly those classes, not
      subclasses) gets ``w_bits`` weights from the quantizer ``weight``; the default
      ``"uniform"`` is per-output-channel on the grid ``weight_zero_point``: ``"integral"``
      (default; the official GDFQ/AIT grid, anchored at 0) or ``"float"`` (anchored at min); see
      :mod:`.functional`. Another quantizer is held by the layer as ``wq`` and called on its
      weight (once here, so a lazily initialised step is set now).
    * ``weight`` / ``act``: a built-in name (weights: uniform, lsq, dorefa, pow2, torch_ao;
      activations: uniform, lsq, pact, torch_ao -- :mod:`landscape.quant.quantizers`), a string
      ``"package.module:Name"`` (imported), or any class/factory called as ``Cls(bits)``
      returning an nn.Module that maps a tensor to its fake-quantized value, its STE inside
      (:mod:`landscape.quant.interface`). A quantizer's own parameters (an LSQ step, a PACT
      clip) train with the student and are marked *auxiliary*: the curvature engine leaves
      them out unless they are named in ``params=``.
    * ``include`` / ``exclude``: which Conv2d/Linear layers are quantized, by their names in
      ``model`` (kept in the student); each an exact name or a shell-style ``fnmatch`` pattern
      (``"layer1.*"``), a string or a list; a pattern that matches no layer is an error.
      Activation quantizers do not depend on them.
    * ``a_bits=None``: weights only, no activation quantizer. Otherwise every nn.ReLU and
      nn.ReLU6 module (as in the official code) is replaced by ``Sequential(relu=<it>,
      quant=<quantizer>)``. The default ``"uniform"`` is :class:`ActQuant`: a per-tensor
      quantizer whose range is an EMA (``act_momentum``) of batch min/max. **Uncalibrated, it
      passes values through**: run :func:`calibrate` (post-training) or the trainer's warm-up
      before using the student.

    What was covered: :func:`coverage_report` ``(student)`` lists every weight tensor quantized
    and every one skipped with its reason (names of ``model``); a matrix or kernel skipped
    because its module type is not quantized (nn.Conv1d, nn.Embedding, a subclass of
    nn.Linear, ...) is also named in one :class:`QuantizationWarning`. A bad ``w_bits``,
    ``a_bits``, quantizer or pattern is a :class:`QuantizerError` (a ``LandscapeError`` and
    ``ValueError``) naming the argument.

    Call sites are found by torch.fx symbolic tracing (no example input needed; the model is
    not run): a ReLU module that the forward pass calls k > 1 times (torchvision's BasicBlock
    calls ``self.relu`` twice) gets an :class:`ActQuantPerCall` with one quantizer per call
    site, so each site has its own range (state-dict keys ``<relu>.quant.0.lo``, ...); a module
    called once keeps ``<relu>.quant.lo`` (our models' checkpoints rely on that). Functional
    activations (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.relu6``) cannot be wrapped in
    place: one :class:`QuantizationWarning` names each of them with its module and source line
    (use an nn.ReLU module to quantize it). If the model cannot be traced (data-dependent
    control flow), one warning says so and every ReLU module gets one quantizer, as if called once.
    """
    check_bits(w_bits, "w_bits")
    if a_bits is not None:
        check_bits(a_bits, "a_bits")
    try:
        check_zero_point(weight_zero_point)
    except ValueError as exc:
        raise QuantizerError(f"quantize_model: weight_zero_point: {exc}") from None
    w_factory, group_size, w_name = _weight_factory(weight, check_group_size(group_size), weight_zero_point)
    a_factory = None if a_bits is None or is_builtin_uniform(act, "act") else resolve_quantizer(act, "act")
    uniform = is_builtin_uniform(re.sub(r"_g\d+$", "", weight) if isinstance(weight, str) else weight, "weight")
    if not uniform and weight_zero_point != "integral":
        raise QuantizerError(f"quantize_model: weight_zero_point = {weight_zero_point!r} applies to the uniform "
                             f"weight quantizer only, not to weight = {spec_name(weight)}; leave it at 'integral'")
    student = copy.deepcopy(model).eval()
    targets = {t.name: t for t in weight_targets(student)}
    chosen, _ = select_layers(list(targets), include, exclude)
    report = _coverage(student, targets, chosen, w_name, act, w_bits, a_bits)
    module_sites = _call_sites(student) if a_bits is not None else {}
    per_call, like = [], next(iter(student.parameters()), None)
    for name in [n for n in targets if n in chosen]:  # model order
        t = targets[name]
        quantizers = {} if w_factory is None else \
            {p: build(w_factory, w_bits, "weight", "weight", t.module._parameters[p]) for p in t.params}
        _to_quant(t.module, quant_class(type(t.module)), w_bits, weight_zero_point, params=t.params,
                  quantizers=quantizers, transposed=t.transposed)
        with torch.no_grad():
            for p in quantizers:
                t.module.quantized_param(p)  # a lazily initialised quantizer (LSQ's step) is set now
    for m in student.modules():  # an attention whose out_proj alone is quantized reads its ŵ too
        if isinstance(m, nn.MultiheadAttention) and not isinstance(m, _QuantWeight) \
                and isinstance(m.out_proj, _QuantWeight):
            _to_quant(m, quant_class(type(m)), w_bits, weight_zero_point, params=())
    for parent_name, parent in list(student.named_modules()):
        if a_bits is None:
            continue
        for child_name, child in list(parent._modules.items()):  # every name, aliases included
            if type(child) in ACTIVATION_MODULES:
                quant = _act_quant(a_bits, act_momentum, module_sites.get(id(child), []), like, a_factory)
                setattr(parent, child_name, nn.Sequential(OrderedDict(relu=child, quant=quant)))
                if isinstance(quant, ActQuantPerCall):
                    per_call.append((f"{parent_name}.{child_name}.quant".lstrip("."), quant))
    if per_call:
        student.register_forward_pre_hook(CallCounters(per_call, check=False))
        student.register_forward_hook(CallCounters(per_call, check=True))
    report.activations = [n for n, m in student.named_modules() if role_of(m) == "act"]
    setattr(student, _COVERAGE, report)
    unsupported = report.unsupported()
    if unsupported:
        warnings.warn(f"quantize_model: {len(unsupported)} weight tensor(s) left in float: "
                      + "; ".join(f"{n} ({r})" for n, r in unsupported.items())
                      + ". See landscape.quant.coverage_report(student).", QuantizationWarning, stacklevel=2)
    return student


def quantized_layers(student: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every quantized Conv2d/Linear, whatever its weight quantizer."""
    return [(n, m) for n, m in student.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def _grid_layers(student: nn.Module) -> list[tuple[str, nn.Module]]:
    """The quantized layers on the built-in uniform grid (no ``wq`` quantizer): those with integer codes."""
    return [(n, m) for n, m in quantized_layers(student) if m.weight_quantizer is None]


def act_quantizers(student: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, quantizer)`` of every activation quantizer (ActQuant or any of the interface)."""
    return [(n, m) for n, m in student.named_modules() if isinstance(m, ActQuant) or role_of(m) == "act"]


@torch.no_grad()
def integer_codes(student: nn.Module) -> dict[str, torch.Tensor]:
    """The integer weight codes q of every quantized layer on the built-in uniform grid
    (LongTensor, weight-shaped), each on its own layer's grid (``m.zero_point``). Layers with
    another weight quantizer (``wq``) have no codes on that grid and are not listed."""
    return {n: weight_codes(m.weight, m.w_bits, m.zero_point) for n, m in _grid_layers(student)}


@contextmanager
def calibrating(student: nn.Module, on: bool = True) -> Iterator[nn.Module]:
    """Within the block, activation quantizers update their EMA range (or stay frozen): every
    activation quantizer with a ``calibrating`` attribute gets ``on``."""
    quantizers = [m for _, m in act_quantizers(student) if hasattr(m, "calibrating")]
    before = [q.calibrating for q in quantizers]
    for q in quantizers:
        q.calibrating = on
    try:
        yield student
    finally:
        for q, b in zip(quantizers, before):
            q.calibrating = b


@torch.no_grad()
def calibrate(student: nn.Module, batches, call: Call | None = None) -> nn.Module:
    """Post-training quantization: set activation ranges from ``batches``, no training.

    A batch is x, (x, y, ...) or a dict such as ``{"input_ids": ..., "attention_mask": ...}``,
    and the student is called on it as the losses call a model (``model(x)``;
    ``model(input_ids)``, with ``attention_mask=`` when the batch has one; ``model(**batch)``
    for a dict without ``input_ids``: :mod:`landscape.quant.batches`), or by ``call(model,
    batch)``. Returns the student, in eval mode."""
    device = next(student.parameters()).device
    student.eval()
    with calibrating(student):
        for batch in batches:
            call_model(student, to_device(batch, device), "calibrate", call)
    return student


@torch.no_grad()
def check_dequantization(student: nn.Module, atol: float = 1e-6) -> list[dict]:
    """Verify every quantized layer on its own grid (``m.zero_point``): codes are integers in
    [−2^(b−1), 2^(b−1) − 1], the forward weight equals s·(q − z), and |w − ŵ| ≤ s/2.

    The bound s/2 holds on both grids. On the integral grid the largest (or smallest) weights
    of a channel may lie outside the grid by up to s·|δ| ≤ s/2, δ = min/s − round(min/s), and
    are clipped to the end code: their error is that distance, so still ≤ s/2 (see
    :mod:`.functional`); ``n_clipped`` counts the weights beyond the grid's end points. Floating-point rounding of w/s + z adds a
    slack of a few ulps of the code magnitude (16 bits in float32: ~1e-2·s).

    Returns one row per layer on the built-in uniform grid (layer, bits, zero_point, n,
    n_clipped, code_min, code_max, max_error_over_scale) and raises QuantizationError naming the
    first layer that fails. Layers with another weight quantizer (``wq``) are not checked here.
    """
    rows = []
    for name, m in _grid_layers(student):
        w, bits = m.weight.detach(), m.w_bits
        scale, zp = weight_qparams(w, bits, m.zero_point)
        q = quantize(w, scale, zp, bits)
        lo, hi = qrange(bits)
        if q.min() < lo or q.max() > hi or not torch.equal(q, q.round()):
            raise QuantizationError(f"{name}: codes outside [{lo}, {hi}] or not integers")
        w_hat = dequantize(q, scale, zp)
        used = m.quantized_weight().detach()
        if not torch.allclose(used, w_hat, atol=atol, rtol=0):
            raise QuantizationError(f"{name}: forward weight differs from scale*(q - zero_point) "
                                    f"by {(used - w_hat).abs().max():.3g}")
        ratio = ((w - w_hat).abs() / scale).max().item()
        slack = 4 * torch.finfo(w.dtype).eps * (w.abs() / scale + zp.abs()).max().item()
        if ratio > 0.5 + max(slack, 1e-6):
            raise QuantizationError(f"{name}: dequantization error {ratio:.4f} x scale > scale/2")
        t, tol = w / scale + zp, max(slack, 1e-6)  # beyond the grid's end points: clipped
        rows.append({"layer": name, "bits": bits, "zero_point": m.zero_point, "n": w.numel(),
                     "n_clipped": int(((t < lo - tol) | (t > hi + tol)).sum()),
                     "code_min": int(q.min()), "code_max": int(q.max()), "max_error_over_scale": ratio})
    return rows
