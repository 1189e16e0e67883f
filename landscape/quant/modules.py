"""Fake-quantized modules: QuantConv2d, QuantLinear and the generated quantized classes
(weights), ActQuant and ActQuantPerCall (activations).

QuantConv2d / QuantLinear subclass nn.Conv2d / nn.Linear and keep their state-dict keys,
so a teacher's weights load into a student unchanged. The latent full-precision weight is
the parameter; the forward pass uses its dequantized value through the identity STE. The
attribute ``zero_point`` (``"integral"``, the official grid, or ``"float"``) picks the weight
grid (see :mod:`.functional`); it is not in the state dict. A layer quantized by another
quantizer of the interface holds it as the sub-module ``wq`` (state-dict keys
``<layer>.wq.*``) and uses ``wq(weight)`` in its forward pass; ``zero_point`` is then unused.

Any other weight module -- a subclass of nn.Linear (MHA's out_proj) or nn.Conv2d, GPT-2's
Conv1D, nn.MultiheadAttention -- becomes a class generated once by :func:`quant_class`, a
subclass of its own class. Its forward computes the float class's function with explicit
weights ŵ of its quantized parameters (``quantized_params``: ``weight``, or MHA's
``in_proj_weight`` / ``q_proj_weight``...): ``F.linear`` / the convolution for a subclass that
keeps nn.Linear's / nn.Conv2d's forward, ``torch.addmm`` for Conv1D, and torch's
``F.multi_head_attention_forward`` for MHA (with out_proj's ŵ, which MHA reads without calling
out_proj). The module is never mutated, so the parameter stays the float leaf that gradients and
curvature are taken with respect to, also when threads call one student at once. A class whose
forward is its own (a subclass that overrides it) falls back to swapping ŵ into
``_parameters`` for the call, under a per-module lock (:class:`_Swapped`). Generated classes
pickle through :func:`quant_class` of the float class, so a student loads in a fresh process.

ActQuant follows a ReLU. Its range is an EMA (momentum 0.9) of batch min/max while
``calibrating`` is True (the warm-up) and frozen otherwise; the range lives in buffers, so
it is saved with the student's state dict. Before any calibration it passes x through.
Its behaviour does not depend on ``train()``/``eval()``: the student always runs with its
BatchNorm in eval mode (full-precision running statistics).

ActQuantPerCall holds one ActQuant per call site of a ReLU module that the model calls more
than once (e.g. torchvision's BasicBlock calls ``self.relu`` twice): the i-th call of a
forward pass uses quantizer i, so each site has its own range.

QuantConv2d / QuantLinear have a ``_frozen`` slot that :func:`landscape.quant.frozen_rounding`
fills: while it is set, the rounding offset recorded at θ replaces the weight quantizer (an
activation quantizer's ``forward`` is replaced there instead, for every quantizer of the interface).
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch
from torch import nn
from torch.nn import functional as F

from landscape.quant import functional as Q
from landscape.quant.errors import CallSiteError


def quantizer_attr(param: str) -> str:
    """The sub-module name of the quantizer of parameter ``param``: ``wq`` for ``weight`` (the
    state-dict keys of issue 16), ``wq_<param>`` otherwise (``wq_in_proj_weight``)."""
    return "wq" if param == "weight" else f"wq_{param}"


class _QuantWeight:
    """Mixin: the fake-quantized parameters of a module (``quantized_params``, ``("weight",)``
    for a layer): each used in the forward pass as w + c, c the (detached) rounding offset of
    the official grid, or as ``wq(w)`` when the module holds another quantizer for it
    (:func:`quantizer_attr`). ``transposed``: the weight is stored (in, out) (GPT-2's Conv1D);
    its quantizer sees (out, in), so channels and groups run along the right dimensions."""

    w_bits: int
    zero_point: str = "integral"
    quantized_params: tuple[str, ...] = ("weight",)
    transposed: bool = False
    _frozen: dict[str, torch.Tensor] | None = None  # c per parameter, held fixed by frozen_rounding

    def param_quantizer(self, param: str = "weight") -> nn.Module | None:
        """The quantizer module of ``param``, or None on the built-in uniform path."""
        return self._modules.get(quantizer_attr(param))

    @property
    def weight_quantizer(self) -> nn.Module | None:
        """The layer's weight quantizer module (``wq``), or None on the built-in uniform path."""
        return self.param_quantizer("weight")

    def _oriented(self, t: torch.Tensor) -> torch.Tensor:
        return t.t() if self.transposed else t

    def param_offset(self, param: str = "weight") -> torch.Tensor:
        """c = ŵ − w of ``param`` at its current value (detached)."""
        w = self._parameters[param]
        wq = self.param_quantizer(param)
        if wq is None:
            return self._oriented(Q.weight_offset(self._oriented(w), self.w_bits, self.zero_point))
        from landscape.quant.interface import offset_of

        c = offset_of(wq, self._oriented(w))
        return torch.zeros_like(w) if c is None else self._oriented(c)

    def quantized_param(self, param: str = "weight") -> torch.Tensor:
        """ŵ of ``param`` as the forward pass uses it (differentiable in w through the STE)."""
        w = self._parameters[param]
        if self._frozen is not None:
            return w + self._frozen[param]
        wq = self.param_quantizer(param)
        if wq is not None:
            return self._oriented(wq(self._oriented(w)))
        return w + self.param_offset(param)

    def quantized_parameters(self) -> dict[str, torch.Tensor]:
        """``{parameter name: ŵ}`` for every quantized parameter of this module (names local to it)."""
        return {p: self.quantized_param(p) for p in self.quantized_params}

    def weight_offset(self) -> torch.Tensor:
        """c = ŵ − w at the current weight (detached)."""
        return self.param_offset("weight")

    def quantized_weight(self) -> torch.Tensor:
        return self.quantized_param("weight")

    def extra_repr(self):
        grid = "" if all(self.param_quantizer(p) is not None for p in self.quantized_params) \
            else f", zero_point={self.zero_point!r}"
        return ", ".join(filter(None, [super().extra_repr(), f"w_bits={self.w_bits}{grid}"]))


class QuantConv2d(_QuantWeight, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_QuantWeight, nn.Linear):
    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)


def _value(module: nn.Module, param: str) -> torch.Tensor | None:
    """The tensor the forward pass uses for ``module``'s parameter ``param``: ŵ when the module
    quantizes it, the parameter itself otherwise (a child left in float, a bias)."""
    if isinstance(module, _QuantWeight) and param in module.quantized_params:
        return module.quantized_param(param)
    return getattr(module, param)


def _rebuild(float_cls: type) -> nn.Module:
    """An empty instance of ``quant_class(float_cls)``, for unpickling (the state follows).
    Saved students name this function: keep its name and place."""
    cls = quant_class(float_cls)
    return cls.__new__(cls)


class _Generated(_QuantWeight):
    """Base of the classes :func:`quant_class` generates. They exist only once quant_class has
    run in a process, so an instance pickles as ``_rebuild(float class)`` plus its state: a
    student saved with ``torch.save`` loads in a fresh process (the float class must be
    importable there, as for the float model)."""

    _float_cls: type | None = None  # the float class, set on each generated class

    def __reduce_ex__(self, protocol):
        reduced = super().__reduce_ex__(protocol)  # (constructor, args, state, ...)
        return (_rebuild, (type(self)._float_cls,)) + tuple(reduced[2:])


class _LinearForward(_Generated):
    """A subclass of nn.Linear that keeps nn.Linear's forward (MHA's out_proj): y = x ŵᵀ + b."""

    def forward(self, input):
        return F.linear(input, _value(self, "weight"), self.bias)


class _Conv2dForward(_Generated):
    """A subclass of nn.Conv2d that keeps nn.Conv2d's forward: the convolution with ŵ."""

    def forward(self, input):
        return self._conv_forward(input, _value(self, "weight"), self.bias)


def _conv1d_forward(self, x):  # transformers' Conv1D.forward, kept to recognise it (_known_conv1d)
    size_out = x.size()[:-1] + (self.nf,)
    x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
    x = x.view(size_out)
    return x


def _known_conv1d(cls: type) -> bool:
    """GPT-2's Conv1D whose forward is exactly :func:`_conv1d_forward` (same bytecode and names),
    so that computing it with ŵ below is the same function; another version falls back."""
    f = getattr(cls.forward, "__code__", None)
    ref = _conv1d_forward.__code__
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers") and f is not None
            and (f.co_code, f.co_names, f.co_consts, f.co_argcount)
            == (ref.co_code, ref.co_names, ref.co_consts, ref.co_argcount))


class _Conv1DForward(_Generated):
    """GPT-2's Conv1D (weight stored (in, out)): y = b + x ŵ, over the last dimension of x."""

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), _value(self, "weight")).view(size_out)


class _MHAForward(_Generated):
    """nn.MultiheadAttention with its own forward: torch's slow path,
    ``F.multi_head_attention_forward`` with ŵ of the input projections (packed ``in_proj_weight``
    or ``q/k/v_proj_weight``) and of ``out_proj`` (which it reads without calling it), and the
    module's settings (batch_first, masks, need_weights, average_attn_weights, is_causal,
    add_zero_attn, bias_k/v, dropout in train mode). torch's inference fast path, which would
    read the float weights itself, computes the same function; it is never taken here."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask", other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask", target_type=query.dtype)
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=query.dtype,
            check_other=False)
        if query.is_nested or key.is_nested or value.is_nested:
            raise AssertionError("MultiheadAttention does not support NestedTensor outside of its fast path, "
                                 "which a quantized attention module never takes (it reads the float weights)")
        if self.batch_first and is_batched:  # keep query is key is value where it holds
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        separate = not self._qkv_same_embed_dim
        projections = dict(q_proj_weight=_value(self, "q_proj_weight"), k_proj_weight=_value(self, "k_proj_weight"),
                           v_proj_weight=_value(self, "v_proj_weight")) if separate else {}
        attn_output, attn_output_weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, _value(self, "in_proj_weight"), self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, _value(self.out_proj, "weight"),
            self.out_proj.bias, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, use_separate_proj_weight=separate,
            average_attn_weights=average_attn_weights, is_causal=is_causal, **projections)
        if self.batch_first and is_batched:
            return attn_output.transpose(1, 0), attn_output_weights
        return attn_output, attn_output_weights


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()
_CLASSES_LOCK = threading.Lock()  # quant_class generates each class once, also under threads


def _lock_of(module: nn.Module) -> threading.RLock:
    """The module's own swap lock (held outside its state, so it neither pickles nor copies)."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock


class _Swapped(_Generated):
    """The fallback for a class whose forward landscape does not know (a subclass of nn.Linear,
    nn.Conv2d or nn.MultiheadAttention with a forward of its own): for the duration of that
    forward, each quantized parameter's entry in ``_parameters`` holds ŵ (differentiable in w
    through the STE) and is restored afterwards, also on error. ``substitute_children``: child
    modules whose parameters this forward reads without calling the child (MHA's ``out_proj``).

    The swap mutates the module, so it runs under a per-module lock (the module's, then each
    child's): concurrent forwards of the module take turns and the parameter is always the
    float leaf again after them. Code in another thread that reads the parameter itself
    (``named_parameters``, ``state_dict``) during such a forward can still see ŵ; the known
    classes (the other generated classes) compute with explicit weights and never swap."""

    substitute_children: tuple[str, ...] = ()
    _float_forward = None  # the float class's forward, set on each generated class

    def forward(self, *args, **kwargs):
        owners = [self] + [c for c in (self._modules.get(n) for n in self.substitute_children)
                           if isinstance(c, _QuantWeight)]
        with contextlib.ExitStack() as stack:
            for m in owners:
                stack.enter_context(_lock_of(m))
            saved = []
            try:
                for m in owners:
                    for p in m.quantized_params:
                        value = m.quantized_param(p)
                        saved.append((m, p, m._parameters[p]))
                        m._parameters[p] = value
                return type(self)._float_forward(self, *args, **kwargs)
            finally:
                for m, p, original in reversed(saved):
                    m._parameters[p] = original


def _forward_kind(cls: type) -> type:
    """The generated class's forward: explicit weights for a forward landscape knows, else the swap."""
    if issubclass(cls, nn.MultiheadAttention) and cls.forward is nn.MultiheadAttention.forward:
        return _MHAForward
    if issubclass(cls, nn.Linear) and cls.forward is nn.Linear.forward:
        return _LinearForward
    if issubclass(cls, nn.Conv2d) and cls.forward is nn.Conv2d.forward:
        return _Conv2dForward
    if _known_conv1d(cls):
        return _Conv1DForward
    return _Swapped


_GENERATED: dict[type, type] = {}


def quant_class(cls: type) -> type:
    """The fake-quantized class of a float module class: QuantConv2d / QuantLinear for exactly
    nn.Conv2d / nn.Linear (their own forward); for any other class (a subclass of nn.Linear,
    GPT-2's Conv1D, nn.MultiheadAttention) a subclass of it and of one of the generated bases
    (:func:`_forward_kind`), generated once and registered in this module under its name.
    Its instances pickle through :func:`_rebuild`, so a student loads in a fresh process."""
    if cls is nn.Conv2d:
        return QuantConv2d
    if cls is nn.Linear:
        return QuantLinear
    with _CLASSES_LOCK:
        if cls not in _GENERATED:
            name = f"Quant{cls.__name__}"
            while name in globals():
                name += "_"
            kind = _forward_kind(cls)
            body = {"_float_cls": cls, "__module__": __name__, "__qualname__": name}
            if kind is _Swapped:
                body["_float_forward"] = cls.forward
                if issubclass(cls, nn.MultiheadAttention):
                    body["substitute_children"] = ("out_proj",)
            _GENERATED[cls] = globals()[name] = type(name, (kind, cls), body)
    return _GENERATED[cls]


class ActQuant(nn.Module):
    def __init__(self, bits: int, momentum: float = 0.9):
        super().__init__()
        self.bits = int(bits)
        self.momentum = float(momentum)
        self.calibrating = False
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach())
        if bool(self.initialized):
            m = self.momentum
            lo, hi = m * self.lo + (1 - m) * lo, m * self.hi + (1 - m) * hi
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        self.initialized.fill_(True)

    def offset(self, x: torch.Tensor) -> torch.Tensor | None:
        """c = x̂ − x under the current range (detached); None before calibration (pass-through)."""
        if not bool(self.initialized):
            return None
        return Q.act_offset(x, self.lo, self.hi, self.bits)

    def forward(self, x):
        if self.calibrating:
            self._update(x)
        c = self.offset(x)
        return x if c is None else x + c

    def extra_repr(self):
        return f"bits={self.bits}, momentum={self.momentum}"


class ActQuantPerCall(nn.ModuleList):
    """One ActQuant per call site of a shared activation module; call i of a pass uses site i.

    ``sites`` names the call sites (from torch.fx) in call order. The counter restarts at every
    forward of the model (a pre-hook that :func:`~landscape.quant.quantize_model` registers)
    and otherwise cycles, so calling the block that holds the sites directly also works. It is
    a counter, not a setting, so it is kept private (``_calls``, read and set as ``calls``): the
    curvature engine's freshness check watches public attributes only.
    """

    def __init__(self, quantizers: list[ActQuant], sites: list[str]):
        super().__init__(quantizers)
        self.sites = list(sites)
        self._calls = 0

    @property
    def calls(self) -> int:
        """How many times this module was called since the model's forward pass began."""
        return self._calls

    @calls.setter
    def calls(self, value: int) -> None:
        self._calls = value

    def forward(self, x):
        q = self[self._calls % len(self)]
        self._calls += 1
        return q(x)

    def extra_repr(self):
        return f"sites={len(self)}"


class CallCounters:
    """The model's hooks for its ActQuantPerCall modules (picklable and deep-copyable with it):
    as a forward pre-hook (``check=False``) it restarts every counter; as a forward hook
    (``check=True``) it checks that each was called once per call site."""

    def __init__(self, per_call: list[tuple[str, ActQuantPerCall]], check: bool):
        self.per_call = per_call
        self.check = check

    def __call__(self, module, *args):
        for name, m in self.per_call:
            if not self.check:
                m.calls = 0
            elif m.calls not in (0, len(m)):
                raise CallSiteError(
                    f"{name}: called {m.calls} times in one forward pass, but torch.fx found {len(m)} call "
                    f"sites ({'; '.join(m.sites)}) when quantize_model gave it one activation quantizer per "
                    f"site; the model's control flow has changed since: quantize the model again")


def _to_quant(module: nn.Module, cls, bits: int, zero_point: str = "integral",
              quantizer: nn.Module | None = None, *, params: tuple[str, ...] = ("weight",),
              quantizers: dict[str, nn.Module] | None = None, transposed: bool = False) -> nn.Module:
    """Turn ``module`` into ``cls`` in place, quantizing its parameters ``params``;
    ``quantizer``: another quantizer for ``weight`` (as ``wq``), ``quantizers``: one per
    parameter ({param: module}, held as :func:`quantizer_attr`)."""
    module.__class__ = cls  # same parameters and buffers; only forward changes
    module.w_bits = int(bits)
    module.zero_point = Q.check_zero_point(zero_point)
    if tuple(params) != ("weight",):
        module.quantized_params = tuple(params)
    if transposed:
        module.transposed = True
    quantizers = dict(quantizers or {})
    if quantizer is not None:
        quantizers["weight"] = quantizer
    for param, q in quantizers.items():
        module.add_module(quantizer_attr(param), q)
    return module
