r"""Rounding offsets held fixed: the function whose derivatives the identity STE reports.

Through the STE ``x + (q(x) − x).detach()`` every quantizer is, for autograd, the input plus a
constant offset c = q(x) − x. So the gradient and the Hessian that the curvature engine
computes at θ are those of

    F(θ') = L(θ'; offsets c_w(θ), c_a(θ) held fixed)

— the float network evaluated at the quantized weights with the rounding offsets of θ —
not of the deployed loss L_q(θ') = L(θ'; offsets re-quantized at θ'), which is piecewise
constant in the weights. Both agree at θ' = θ. A loss slice or a finite difference of the
plain student re-quantizes at every point, so it measures L_q; inside :func:`frozen_rounding`
it measures F, and the second difference (F(θ+hd) − 2F(θ) + F(θ−hd))/h² tends to dᵀHd.

That holds for quantizers whose STE is the identity (uniform, pow2, torch_ao inside its range,
any ``x + (q(x) − x).detach()``). A quantizer with another backward (LSQ's and PACT's clipping
masks, DoReFa's tanh) gives the engine the derivatives through that backward, while F holds
the offset c = q(x) − x of *every* quantizer of the interface fixed, as defined: F(θ) is still
the fake-quant loss, and F is still the float network at the rounding of θ; a quantizer's own
parameters (LSQ's step, PACT's clip) do not enter F.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from landscape.quant.batches import Call, call_model, key_tensor, to_device
from landscape.quant.errors import FrozenRoundingError
from landscape.quant.interface import offset_of, role_of
from landscape.quant.modules import ActQuant, _QuantWeight


class _Tape:
    """The offsets c_a = q(a) − a of one activation quantizer, per batch, in call order (None =
    pass-through); installed as the quantizer's ``forward`` inside the block."""

    def __init__(self, name: str, n_batches: int, quantizer: nn.Module):
        self.name = name
        self.quantizer = quantizer
        self.calls: list[list[tuple[torch.Size, torch.Tensor | None]]] = [[] for _ in range(n_batches)]
        self.recording = True
        self.batch = 0
        self.pos = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.recording:  # the range stays as it is: no calibration update
            q = self.quantizer
            c = offset_of(q, x, forward=lambda t: type(q).forward(q, t))
            self.calls[self.batch].append((x.shape, c))
        else:
            calls = self.calls[self.batch]
            if self.pos >= len(calls):
                raise FrozenRoundingError(
                    f"frozen_rounding: activation quantizer {self.name} called {self.pos + 1} times on batch "
                    f"{self.batch}, but only {len(calls)} times when the offsets were recorded")
            shape, c = calls[self.pos]
            if x.shape != shape:
                raise FrozenRoundingError(
                    f"frozen_rounding: activation quantizer {self.name}, call {self.pos + 1} on batch {self.batch}: "
                    f"input of shape {tuple(x.shape)}, but {tuple(shape)} when the offsets were recorded")
            self.pos += 1
        return x if c is None else x + c


class _Replay:
    """The model's hooks inside the block: find which recorded batch the input is (by value),
    check the modules' modes, point every tape at that batch, and check all calls happened."""

    def __init__(self, model: nn.Module, inputs: list[torch.Tensor], tapes: list[_Tape]):
        self.inputs = inputs
        self.tapes = tapes
        self.modes = [m.training for m in model.modules()]
        self.last = -1

    @staticmethod
    def _key(args: tuple, kwargs: dict) -> Any:
        """The tensor the call is recognised by: its first positional argument, else ``input_ids``
        or the first tensor among the keyword arguments (``model(**batch)``)."""
        if args:
            return args[0]
        return kwargs.get("input_ids", next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None))

    def _find(self, x: Any) -> int:
        n = len(self.inputs)
        for j in [(self.last + 1 + k) % n for k in range(n)]:
            rec = self.inputs[j]
            if (isinstance(x, torch.Tensor) and x.shape == rec.shape and x.dtype == rec.dtype
                    and torch.equal(x, rec.to(x.device))):
                return j
        what = f"an input of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        raise FrozenRoundingError(
            f"frozen_rounding: the model was called on {what} that is not one of the {n} batches given on "
            f"entry; the rounding offsets are recorded per batch, so inside the block call the model only "
            f"on those batches (in any order)")

    def before(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        j = self._find(self._key(args, kwargs))
        modes = [m.training for m in model.modules()]
        if modes != self.modes:
            now = "train" if model.training else "eval"
            raise FrozenRoundingError(
                f"frozen_rounding: module modes (train/eval) differ from those on entry (the model is in {now} "
                f"mode now); BatchNorm in another mode changes the activations, so enter the block in the "
                f"mode you evaluate in (the curvature engine uses eval mode)")
        self.last = j
        for t in self.tapes:
            t.batch, t.pos = j, 0

    def after(self, model: nn.Module, args: tuple, output: Any) -> None:
        for t in self.tapes:
            if t.pos != len(t.calls[t.batch]):
                raise FrozenRoundingError(
                    f"frozen_rounding: activation quantizer {t.name} called {t.pos} times on batch {t.batch}, "
                    f"but {len(t.calls[t.batch])} times when the offsets were recorded")


@contextmanager
def frozen_rounding(model: nn.Module, batches: Iterable[Any], call: Call | None = None) -> Iterator[nn.Module]:
    r"""Hold every rounding offset of a fake-quantized ``model`` fixed at the current θ.

    On entry (parameters at θ, the model in its current train/eval mode) the offset
    c_w = ŵ − w of every quantized weight tensor (QuantConv2d/QuantLinear, attention projections,
    Conv1D; whatever its weight quantizer, per-group ones included) is taken at θ,
    and ``batches`` (x, (x, y, ...) or dicts such as {"input_ids": ...}, called as
    :mod:`landscape.quant.batches` says, or by ``call(model, batch)``; a list or a DataLoader
    without shuffling) are run once
    under no_grad to record, for every activation quantizer (ActQuant or any quantizer of the
    interface), the offset c_a = q(a) − a of each call, per batch, in call order. Activation
    ranges are not updated (a quantizer's ``calibrating`` is off for the recording) and
    buffers (BatchNorm statistics) are restored.

    Inside the block the forward pass uses w + c_w and a + c_a, so the loss at θ' is

        F(θ') = L(θ'; c_w(θ), c_a(θ)),

    exactly the function whose gradient and Hessian at θ the identity STE reports: F(θ) and
    ∇F(θ) equal the fake-quant loss and its STE gradient, and ∇²F(θ) is the Hessian of
    :class:`landscape.curvature.Hessian` (for quantizers with another backward, see the module
    docstring). A loss slice inside the block is the slice of F;
    outside it re-quantizes at every point (the deployed, piecewise-constant loss).

    Each call of the model inside the block must be on one of the recorded batches (found by
    value of its first argument, or of ``input_ids``, in any order) in the same mode; each quantizer then replays that batch's offsets in
    call order. Another input, another shape at a replayed call, another mode or another
    number of calls raises :class:`FrozenRoundingError`, never a silently wrong number. On exit
    (also on error) the model is as before.

    >>> with frozen_rounding(student, batches):                      # doctest: +SKIP
    ...     values = loss_slice(student, loss_fn, batches, direction, ks)   # the slice of F
    """
    weights = [(n, m) for n, m in model.named_modules() if isinstance(m, _QuantWeight)]
    quantizers = [(n, m) for n, m in model.named_modules() if isinstance(m, ActQuant) or role_of(m) == "act"]
    if any(m._frozen is not None for _, m in weights) or any("forward" in m.__dict__ for _, m in quantizers):
        raise FrozenRoundingError("frozen_rounding: the model is already inside a frozen_rounding block")
    if not weights and not quantizers:
        raise FrozenRoundingError("frozen_rounding: the model has no quantized layer or activation quantizer "
                                  "(quantize it with landscape.quant.quantize_model first)")
    device = next(model.parameters()).device
    batches = [to_device(b, device) for b in batches]
    inputs = [key_tensor(b, "frozen_rounding") for b in batches]
    if not inputs:
        raise FrozenRoundingError("frozen_rounding: no batches: pass the batches the loss is evaluated on")
    tapes = [_Tape(n, len(inputs), m) for n, m in quantizers]
    handles = []
    try:
        for _, m in weights:
            m._frozen = {p: m.param_offset(p) for p in m.quantized_params}
        for t, (_, m) in zip(tapes, quantizers):
            m.forward = t  # the instance's forward: the tape records, then replays
        saved = {n: b.clone() for n, b in model.named_buffers()} if any(m.training for m in model.modules()) else {}
        with torch.no_grad():
            for j, batch in enumerate(batches):
                for t in tapes:
                    t.batch = j
                call_model(model, batch, "frozen_rounding", call)
            for n, b in model.named_buffers():
                if n in saved:
                    b.copy_(saved[n])
        for t in tapes:
            t.recording = False
        replay = _Replay(model, inputs, tapes)
        handles = [model.register_forward_pre_hook(replay.before, with_kwargs=True),
                   model.register_forward_hook(replay.after)]
        yield model
    finally:
        for h in handles:
            h.remove()
        for _, m in weights:
            m.__dict__.pop("_frozen", None)  # back to the class default, None
        for _, m in quantizers:
            m.__dict__.pop("forward", None)  # back to the class's forward
