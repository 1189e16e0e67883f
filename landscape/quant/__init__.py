"""Fake quantization of a teacher into a student (see :mod:`.functional` for the arithmetic).

    student = quantize_model(teacher, w_bits=4, a_bits=4)   # deep copy, eval mode
    student = quantize_model(teacher, 4, None, weight="lsq") # weights only, another quantizer
    student = quantize_model(lm, 4, None, group_size=64)      # weights only, per-group scales
    coverage_report(student)  -> which weight tensors were quantized, which skipped and why
    calibrate(student, batches)                               # PTQ: activation ranges
    quantized_layers(student) -> [(name, QuantConv2d | QuantLinear | a quantized Linear subclass)]
    forward_weights(student)  -> {parameter name: ŵ}      # attention projections included
    integer_codes(student)    -> {name: LongTensor}
    check_dequantization(student) -> per-layer report; raises QuantizationError on failure
    with frozen_rounding(student, batches): ...   # rounding offsets held fixed at θ
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter, OrderedDict
from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn

from landscape.quant import functional
from landscape.quant.batches import Call, call_model, to_device
from landscape.quant.coverage import ACTIVATION_MODULES, activation_sites, float_activation
from landscape.quant.coverage_report import ATTR as _COVERAGE
from landscape.quant.coverage_report import EXCLUDED, CoverageReport, coverage_report, skip_reason
from landscape.quant.errors import FrozenRoundingError, QuantizationError, QuantizationWarning, QuantizerError
from landscape.quant.frozen import frozen_rounding
from landscape.quant.functional import (check_zero_point, dequantize, fake_quant_weight, qrange, quantize,
                                        weight_codes, weight_qparams)
from landscape.quant.groups import check_group_size
from landscape.quant.interface import (BUILTIN_ACT, BUILTIN_WEIGHT, ROLE, build, check_bits, is_builtin_uniform,
                                       resolve_quantizer, role_of, select_layers, spec_name, split_group,
                                       with_group_size)
from landscape.quant.modules import (ActQuant, ActQuantPerCall, CallCounters, QuantConv2d, QuantLinear, _QuantWeight,
                                     _to_quant, quant_class)
from landscape.quant.source_scan import source_sites
from landscape.quant.targets import Target, close_fast_paths, weight_targets, weight_tensors

__all__ = ["quantize_model", "quantized_layers", "integer_codes", "act_quantizers", "coverage_report",
           "CoverageReport", "calibrating", "calibrate", "check_dequantization", "frozen_rounding",
           "QuantizationError", "QuantizationWarning", "FrozenRoundingError", "QuantizerError",
           "BUILTIN_WEIGHT", "BUILTIN_ACT", "quantized_tensors", "forward_weights",
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


RELU_CALLS = {"F.relu", "F.relu_", "torch.relu", "torch.relu_", "F.relu6", "Tensor.relu()", "Tensor.relu_()",
              "relu", "relu6"}


def _call_sites(student: nn.Module) -> dict[int, list[str]]:
    """id(activation module) -> its call sites; the warnings for what cannot be quantized.

    An activation module held under two names gets one quantizer per holder (no site list).
    """
    sites = activation_sites(student)
    relus = [n for n, m in student.named_modules() if type(m) in ACTIVATION_MODULES]
    floats = [f"`{n}` ({'nn.' if type(m).__module__.startswith('torch.nn') else ''}{type(m).__name__})"
              for n, m in student.named_modules() if float_activation(m)]
    floats += [f"`{n}` (nn.{type(m).__name__}'s {getattr(m.activation, '__name__', 'activation')})"
               for n, m in student.named_modules()  # torch's layers call a functional activation inside
               if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
               and not isinstance(m.activation, nn.Module)]
    unread: list[str] = []
    if isinstance(sites, str):
        if relus:  # what the fallback loses: a ReLU module called twice shares one quantizer
            warnings.warn(f"quantize_model: torch.fx cannot trace {type(student).__name__} ({sites}), so the call "
                          f"sites of its {len(relus)} nn.ReLU/ReLU6 module(s) were not checked: each gets one "
                          f"quantizer shared by all its calls", QuantizationWarning, stacklevel=3)
        functional, unread = source_sites(student)  # exact for what the source says; no warning of its own
    else:
        functional = sites.functional
    if floats or functional or unread:
        parts = ([f"module(s) {', '.join(floats)}"] if floats else []) \
            + ([f"functional call(s) {'; '.join(functional)}"] if functional else []) \
            + ([f"the functional calls of {', '.join(unread)}.forward (its source could not be read)"]
               if unread else [])
        warnings.warn(f"quantize_model: {len(floats) + len(functional)} activation(s) cannot be quantized in place "
                      f"and stay in float (only nn.ReLU / nn.ReLU6 modules get an activation quantizer): "
                      + "; ".join(parts) + "." + (" A functional ReLU is quantized once it is an nn.ReLU module."
                                                  if any(f.split()[0] in RELU_CALLS for f in functional) else ""),
                      QuantizationWarning, stacklevel=3)
    if isinstance(sites, str):
        return {}
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
    base, suffix = split_group(weight)
    if suffix is not None:
        if group_size is not None and group_size != suffix:
            raise QuantizerError(f"quantize_model: weight = {weight!r} says group_size {suffix} but group_size = "
                                 f"{group_size}; give one of them")
        group_size = check_group_size(suffix, f"weight = {weight!r}: group size")
    name = base if isinstance(base, str) else spec_name(base)
    if group_size is None:
        return (None if is_builtin_uniform(base, "weight") else resolve_quantizer(base, "weight")), None, name
    if is_builtin_uniform(base, "weight"):
        from landscape.quant.quantizers.uniform import UniformWeight

        return partial(UniformWeight, zero_point=weight_zero_point, group_size=group_size), group_size, \
            f"{name}_g{group_size}"
    return with_group_size(resolve_quantizer(base, "weight"), group_size, "weight"), group_size, f"{name}_g{group_size}"


def quantize_model(model: nn.Module, w_bits: int, a_bits: int | None, act_momentum: float = 0.9, *,
                   weight="uniform", act="uniform", weight_zero_point: str = "integral",
                   group_size: int | None = None, include=None, exclude=None) -> nn.Module:
    """A fake-quantized deep copy of ``model``, in eval mode.

    * **Weights** (:mod:`.targets`): every nn.Linear and nn.Conv2d and every subclass of them
      (first and last layers included; nn.MultiheadAttention's ``out_proj``, a
      NonDynamicallyQuantizableLinear, too), GPT-2's ``Conv1D``, and nn.MultiheadAttention's
      input projection (the packed ``in_proj_weight``, or ``q_proj_weight`` / ``k_proj_weight`` /
      ``v_proj_weight`` when kdim/vdim differ from embed_dim) get ``w_bits`` weights from the
      quantizer ``weight``. Exactly nn.Linear / nn.Conv2d become QuantLinear / QuantConv2d;
      any other class keeps its class and its own forward, which reads ŵ in place of each
      quantized parameter for the duration of the call (MHA also reads its out_proj's ŵ). The
      parameters stay the float ones (names, state-dict keys, ``requires_grad``): gradients
      and curvature are taken with respect to them through the straight-through estimator.
    * The default ``"uniform"`` is per-output-channel on the grid ``weight_zero_point``:
      ``"integral"`` (default; the official GDFQ/AIT grid, anchored at 0) or ``"float"``
      (anchored at min); see :mod:`.functional`. Another quantizer is held by the layer as
      ``wq`` (``wq_<param>`` for an attention projection) and called on its weight (once here,
      so a lazily initialised step is set now).
    * ``group_size = g``: per-group scales, one per g consecutive inputs of each output
      channel (GPTQ/AWQ-style; a Conv2d kernel's inputs are in·kh·kw; Conv1D's are the rows of
      its stored (in, out) weight); the last group is shorter when g does not divide the input
      dimension; g ≥ the input dimension is the per-channel quantizer (:mod:`.groups`). For
      ``"uniform"`` (round to nearest, on ``weight_zero_point``'s grid) and ``"lsq"`` (one
      learned step per group), or a class whose ``__init__`` takes ``group_size=``. The name
      ``"uniform_g64"`` / ``"lsq_g64"`` is the same as ``weight=..., group_size=64``.
    * ``weight`` / ``act``: a built-in name (weights: uniform, lsq, dorefa, pow2, torch_ao;
      activations: uniform, lsq, pact, torch_ao -- :mod:`landscape.quant.quantizers`), a string
      ``"package.module:Name"`` (imported), or any class/factory called as ``Cls(bits)``
      returning an nn.Module that maps a tensor to its fake-quantized value, its STE inside
      (:mod:`landscape.quant.interface`). A quantizer's own parameters (an LSQ step, a PACT
      clip) train with the student and are marked *auxiliary*: the curvature engine leaves
      them out unless they are named in ``params=``.
    * ``include`` / ``exclude``: which weight modules are quantized, by their names in
      ``model`` (kept in the student; an nn.MultiheadAttention's name selects its input
      projection, ``<name>.out_proj`` its output projection); each an exact name or a
      shell-style ``fnmatch`` pattern (``"layer1.*"``), a string or a list; a pattern that
      matches no layer is an error. Activation quantizers do not depend on them.
    * ``a_bits=None``: weights only, no activation quantizer. Otherwise every nn.ReLU and
      nn.ReLU6 module (as in the official code) is replaced by ``Sequential(relu=<it>,
      quant=<quantizer>)``. The default ``"uniform"`` is :class:`ActQuant`: a per-tensor
      quantizer whose range is an EMA (``act_momentum``) of batch min/max. **Uncalibrated, it
      passes values through**: run :func:`calibrate` (post-training) or the trainer's warm-up
      before using the student. Every other activation (GELU, SiLU, ... modules, functional
      calls) cannot be quantized in place and stays in float: one :class:`QuantizationWarning`
      names them all (:mod:`.coverage`).

    What was covered: :func:`coverage_report` ``(student)`` lists every weight tensor quantized
    and every one skipped with its reason (names of ``model``); a matrix or kernel skipped
    because its module type is not quantized (nn.Conv1d, nn.Embedding, ...) is also named in
    one :class:`QuantizationWarning`. A bad ``w_bits``, ``a_bits``, ``group_size``, quantizer
    or pattern is a :class:`QuantizerError` (a ``LandscapeError`` and ``ValueError``) naming
    the argument.

    Call sites are found by torch.fx symbolic tracing (no example input needed; the model is
    not run): a ReLU module that the forward pass calls k > 1 times (torchvision's BasicBlock
    calls ``self.relu`` twice) gets an :class:`ActQuantPerCall` with one quantizer per call
    site, so each site has its own range (state-dict keys ``<relu>.quant.0.lo``, ...); a module
    called once keeps ``<relu>.quant.lo`` (our models' checkpoints rely on that). Functional
    activations (``F.relu``, ``F.gelu``, ``torch.tanh``, ``x.relu()``, ...) are named with their
    module and source line in the one warning (use an nn.ReLU module to quantize a ReLU). If the
    model cannot be traced (data-dependent control flow; a language model building its causal
    mask from ``x.size(1)``), the functional calls are read from the forwards' source instead
    (:mod:`.source_scan`), and -- only if the model has ReLU modules -- one warning says that
    each of them gets one quantizer, as if called once.
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
    uniform = is_builtin_uniform(split_group(weight)[0], "weight")
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
    close_fast_paths(student)
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
    """``(name, layer)`` of every layer whose quantized ``weight`` is stored (out, in, ...):
    QuantConv2d, QuantLinear and the quantized subclasses of nn.Linear / nn.Conv2d, whatever
    the weight quantizer. GPT-2's Conv1D (stored (in, out)) and attention projections are in
    :func:`quantized_tensors`."""
    return [(n, m) for n, m in student.named_modules()
            if isinstance(m, _QuantWeight) and isinstance(m, (nn.Linear, nn.Conv2d)) and "weight" in m.quantized_params]


def quantized_tensors(student: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(parameter name, module, local name)`` of every quantized weight tensor, in model order
    (``blocks.0.attn.in_proj_weight``, ``blocks.0.attn.out_proj.weight``, ...)."""
    return [(f"{n}.{p}" if n else p, m, p) for n, m in student.named_modules() if isinstance(m, _QuantWeight)
            for p in m.quantized_params]


@torch.no_grad()
def forward_weights(student: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: ŵ}``: the value every quantized weight tensor computes with (detached,
    in its parameter's shape); the names are the float model's parameter names."""
    return {name: m.quantized_param(p).detach().clone() for name, m, p in quantized_tensors(student)}


def _grid(m: nn.Module, p: str) -> tuple[int, str, int | None] | None:
    """(bits, zero point, group size) of a tensor on the uniform grid (the built-in path or a
    UniformWeight quantizer), else None."""
    from landscape.quant.quantizers.uniform import UniformWeight

    q = m.param_quantizer(p)
    if q is None:
        return m.w_bits, m.zero_point, None
    if type(q) is UniformWeight:
        return q.bits, q.zero_point, q.group_size
    return None


def _grid_tensors(student: nn.Module) -> list[tuple[str, nn.Module, str, tuple[int, str, int | None]]]:
    """(key, module, local name, grid) of every quantized tensor on the uniform grid; the key is
    the layer name for a layer's ``weight`` (``"fc"``), else the parameter name."""
    out = []
    for name, m, p in quantized_tensors(student):
        grid = _grid(m, p)
        if grid is not None:
            key = name[:-len(".weight")] if name.endswith(".weight") else "" if name == "weight" else name
            out.append((key, m, p, grid))
    return out


def act_quantizers(student: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, quantizer)`` of every activation quantizer (ActQuant or any of the interface)."""
    return [(n, m) for n, m in student.named_modules() if isinstance(m, ActQuant) or role_of(m) == "act"]


@torch.no_grad()
def integer_codes(student: nn.Module) -> dict[str, torch.Tensor]:
    """The integer codes q of every quantized weight tensor on the uniform grid (the built-in
    per-channel path and per-group ``group_size=`` uniform), LongTensor in the parameter's
    shape, keyed by layer name for a layer's ``weight`` (``"fc"``) and by parameter name
    otherwise (``"attn.in_proj_weight"``). Tensors of another quantizer have no codes on that
    grid and are not listed."""
    return {key: m._oriented(weight_codes(m._oriented(m._parameters[p]), *grid))
            for key, m, p, grid in _grid_tensors(student)}


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

    Returns one row per tensor on the uniform grid, per channel or per group (layer, bits,
    zero_point, group_size, n, n_clipped, code_min, code_max, max_error_over_scale; ``layer``
    as the keys of :func:`integer_codes`) and raises QuantizationError naming the first that
    fails. Tensors of another weight quantizer are not checked here.
    """
    rows = []
    for name, m, p, (bits, zero_point, group_size) in _grid_tensors(student):
        w = m._oriented(m._parameters[p].detach())  # (out, in, ...): channels and groups by rows
        scale, zp = weight_qparams(w, bits, zero_point, group_size)
        q = quantize(w, scale, zp, bits)
        lo, hi = qrange(bits)
        if q.min() < lo or q.max() > hi or not torch.equal(q, q.round()):
            raise QuantizationError(f"{name}: codes outside [{lo}, {hi}] or not integers")
        w_hat = dequantize(q, scale, zp)
        used = m._oriented((m.quantized_weight() if p == "weight" else m.quantized_param(p)).detach())
        if not torch.allclose(used, w_hat, atol=atol, rtol=0):
            raise QuantizationError(f"{name}: forward weight differs from scale*(q - zero_point) "
                                    f"by {(used - w_hat).abs().max():.3g}")
        ratio = ((w - w_hat).abs() / scale).max().item()
        slack = 4 * torch.finfo(w.dtype).eps * (w.abs() / scale + zp.abs()).max().item()
        if ratio > 0.5 + max(slack, 1e-6):
            raise QuantizationError(f"{name}: dequantization error {ratio:.4f} x scale > scale/2")
        t, tol = w / scale + zp, max(slack, 1e-6)  # beyond the grid's end points: clipped
        rows.append({"layer": name, "bits": bits, "zero_point": zero_point, "group_size": group_size, "n": w.numel(),
                     "n_clipped": int(((t < lo - tol) | (t > hi + tol)).sum()),
                     "code_min": int(q.min()), "code_max": int(q.max()), "max_error_over_scale": ratio})
    return rows
