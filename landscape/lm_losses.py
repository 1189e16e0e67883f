r"""Language-model losses on dict batches: :func:`causal_lm` and :func:`hf_loss`.

A batch is a dict of tensors, as tokenizers and Hugging Face collators make them:
``{"input_ids": (B, T) long, "attention_mask": (B, T) 0/1 (optional), "labels": (B, T) (optional)}``.

**causal_lm()** -- the shifted next-token cross-entropy, the mean over predicted tokens:

    L = −(1/N) Σ_{(b,t) ∈ P} log softmax(f_{b,t})[y_{b,t+1}],     N = |P|,

with logits f = model(...) of shape (B, T, V), targets y = ``labels`` (default: ``input_ids``;
aligned with the inputs, the shift is done here, as in Hugging Face), and P the predicted pairs
(context position t, target t+1): those whose target is not −100 and, when the batch has an
``attention_mask``, whose context and target are both real tokens (mask 1). A padded token is
therefore never a target and never predicts one, whichever side the padding is on.

The model is called as ``model(input_ids)`` when the batch has no ``attention_mask`` and as
``model(input_ids, attention_mask=mask)`` when it has one (what Hugging Face models and a
padding-aware model of your own take); ``causal_lm(pass_mask=False)`` always calls
``model(input_ids)`` (a model without that argument; the mask still chooses the tokens of the
loss). The model may return the logits (B, T, V) or an object with ``.logits``.

**hf_loss()** -- whatever ``model(**batch).loss`` is (the batch needs ``labels``). Its
Hessian is that of the model's own loss. For the Gauss-Newton operators it splits at
``model(**batch).logits`` assuming Hugging Face's causal-LM loss: the shifted cross-entropy
with labels −100 ignored, mean over predicted tokens, ``attention_mask`` not consulted (a
collator marks padding with label −100). Every time the GGN builds a graph that assumption is
checked: if ``.loss`` is not that function of ``.logits`` (a sequence classifier, a loss with
label smoothing) the GGN refuses with :class:`LMLossError` instead of giving another matrix.

**Output Hessian (GGN, Fisher).** Per predicted pair (b, t) the Hessian of L with respect to
the logits f_{b,t} is ``(diag p − p pᵀ)/N``, p = softmax(f_{b,t}); rows of f that predict
nothing (the last position, padding, ignored labels) have a zero block. ``output_hessian``
returns a :class:`TokenOutputHessian`: :class:`~landscape.losses.SoftmaxOutputHessian` on the
N predicted rows, scattered back into the (B, T, V) shape of the logits.

Batches are weighted by their number of sequences in the engine's mean over batches; with
batches of equal shape and the same number of predicted tokens this is the token mean over
all batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LandscapeError
from .output_hessians import SoftmaxOutputHessian

__all__ = ["causal_lm", "hf_loss", "CausalLM", "HFLoss", "TokenOutputHessian", "LMLossError", "IGNORE_INDEX"]

IGNORE_INDEX = -100


class LMLossError(LandscapeError, ValueError):
    """A batch or a model output that a language-model loss cannot use (the message names the key and the fix)."""


# ---------------------------------------------------------------------------- batches
def _check_batch(batch: Any, who: str) -> dict:
    if not isinstance(batch, dict):
        hint = " (for (x, y) batches use landscape.losses.cross_entropy())" if isinstance(batch, (tuple, list)) else ""
        raise LMLossError(f"{who} needs a dict batch {{'input_ids': (B, T) tensor, ...}}, got {type(batch).__name__}{hint}")
    ids = batch.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        got = type(ids).__name__ if not isinstance(ids, torch.Tensor) else f"shape {tuple(ids.shape)}"
        raise LMLossError(f"{who}: batch['input_ids'] must be a (B, T) tensor of token ids, got {got}")
    if ids.shape[1] < 2:
        raise LMLossError(f"{who}: batch['input_ids'] has T = {ids.shape[1]} tokens; next-token prediction needs T >= 2")
    for key in ("attention_mask", "labels"):
        t = batch.get(key)
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != ids.shape):
            got = type(t).__name__ if not isinstance(t, torch.Tensor) else f"shape {tuple(t.shape)}"
            raise LMLossError(f"{who}: batch[{key!r}] must be a tensor shaped like input_ids {tuple(ids.shape)}, got {got}")
    return batch


def shifted_targets(batch: dict, use_mask: bool = True) -> torch.Tensor:
    """Targets (B, T−1) of the logits at positions 0..T−2: ``labels[:, 1:]`` (or ``input_ids[:, 1:]``),
    −100 where the label is −100 or (``use_mask``) where context or target is padding."""
    ids = batch["input_ids"]
    labels = batch.get("labels")
    tgt = (ids if labels is None else labels)[:, 1:].long().clone()
    mask = batch.get("attention_mask")
    if use_mask and mask is not None:
        keep = mask[:, 1:].bool() & mask[:, :-1].bool()
        tgt[~keep] = IGNORE_INDEX
    return tgt


def _shifted_ce(f: torch.Tensor, tgt: torch.Tensor, who: str) -> torch.Tensor:
    n = int((tgt != IGNORE_INDEX).sum())
    if n == 0:
        raise LMLossError(f"{who}: the batch has no predicted token (every target is padding or labels -100)")
    V = f.shape[-1]
    bad = (tgt != IGNORE_INDEX) & ((tgt < 0) | (tgt >= V))
    if bool(bad.any()):
        raise LMLossError(f"{who}: a target token id is outside the vocabulary [0, {V}) of the logits; "
                          "check batch['labels'] / batch['input_ids'] (ignored labels must be -100)")
    return F.cross_entropy(f[:, :-1].reshape(-1, V), tgt.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum") / n


def _logits_of(out: Any, ids: torch.Tensor, who: str) -> torch.Tensor:
    f = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(f, torch.Tensor):
        raise LMLossError(f"{who}: the model must return logits (B, T, V) or an object with .logits, "
                          f"got {type(out).__name__}")
    if f.dim() != 3 or tuple(f.shape[:2]) != tuple(ids.shape):
        raise LMLossError(f"{who}: the model's logits must have shape (B, T, V) = {tuple(ids.shape)} + (V,), "
                          f"got {tuple(f.shape)}")
    return f


# ---------------------------------------------------------------------------- output Hessian
class TokenOutputHessian:
    r"""``κ (diag p − p pᵀ)`` on the predicted rows of (B, T, V) logits, zero on the others.

    ``inner`` is a :class:`~landscape.losses.SoftmaxOutputHessian` on the N predicted rows (N, V);
    ``rows`` their flat positions in the B·T rows. ``apply(w)`` takes and returns a (B, T, V)
    tensor; ``dense()`` the (B·T, V, V) blocks; ``fisher_factors`` the (K, B, T, V) factors.
    """

    def __init__(self, inner: Any, rows: torch.Tensor, shape: tuple[int, int, int]):
        self.inner, self.rows, self.shape = inner, rows, tuple(shape)

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        B, T, V = self.shape
        out = w.new_zeros(B * T, V)
        out[self.rows] = self.inner.apply(w.reshape(B * T, V)[self.rows])
        return out.reshape(B, T, V)

    def dense(self) -> torch.Tensor:
        B, T, V = self.shape
        blocks = self.inner.dense()  # (N, V, V)
        out = blocks.new_zeros(B * T, V, V)
        out[self.rows] = blocks
        return out

    def fisher_factors(self, mc_samples: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        B, T, V = self.shape
        G = self.inner.fisher_factors(mc_samples, generator)  # (K, N, V)
        out = G.new_zeros(G.shape[0], B * T, V)
        out[:, self.rows] = G
        return out.reshape(G.shape[0], B, T, V)


def _token_hessian(outputs: torch.Tensor, batch: Any, who: str, use_mask: bool) -> TokenOutputHessian:
    """The output Hessian of the shifted CE of ``who`` (padding in the mask dropped or not, ``use_mask``)."""
    batch = _check_batch(batch, who)
    f = _logits_of(outputs, batch["input_ids"], who)
    tgt = shifted_targets(batch, use_mask)
    B, T, V = f.shape
    keep = torch.zeros(B, T, dtype=torch.bool, device=f.device)
    keep[:, :-1] = tgt != IGNORE_INDEX
    rows = keep.reshape(-1).nonzero().reshape(-1)
    n = rows.numel()
    if n == 0:
        raise LMLossError("the batch has no predicted token (every target is padding or labels -100)")
    probs = F.softmax(f.detach().reshape(B * T, V)[rows], dim=-1)
    return TokenOutputHessian(SoftmaxOutputHessian(probs, 1.0 / n), rows, (B, T, V))


# ---------------------------------------------------------------------------- the losses
class CausalLM(nn.Module):
    """``loss_fn(model, batch)``: shifted next-token cross-entropy, mean over predicted tokens (see the module)."""

    name = "ce"

    def __init__(self, pass_mask: bool = True):
        super().__init__()
        if not isinstance(pass_mask, bool):
            raise LMLossError(f"causal_lm(pass_mask=...) must be True or False, got {pass_mask!r}")
        self.pass_mask = pass_mask

    def outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The logits (B, T, V): ``model(input_ids)`` or ``model(input_ids, attention_mask=mask)``."""
        batch = _check_batch(batch, "causal_lm")
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        if mask is None or not self.pass_mask:
            return _logits_of(model(ids), ids, "causal_lm")
        try:
            out = model(ids, attention_mask=mask)
        except TypeError as exc:
            if "attention_mask" not in str(exc):
                raise
            raise LMLossError(f"causal_lm: {type(model).__name__}.forward takes no attention_mask argument ({exc}); "
                              "use causal_lm(pass_mask=False) to call model(input_ids) and apply the mask to the "
                              "loss only") from None
        return _logits_of(out, ids, "causal_lm")

    def on_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """The mean next-token CE of given logits (B, T, V) over the batch's predicted tokens."""
        batch = _check_batch(batch, "causal_lm")
        return _shifted_ce(_logits_of(outputs, batch["input_ids"], "causal_lm"), shifted_targets(batch), "causal_lm")

    def output_hessian(self, outputs: torch.Tensor, batch: Any) -> TokenOutputHessian:
        """``(diag p − p pᵀ)/N`` per predicted token, zero elsewhere (see the module)."""
        return _token_hessian(outputs, batch, "causal_lm", use_mask=True)

    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.on_outputs(self.outputs(model, batch), batch)

    def __repr__(self) -> str:
        return "causal_lm()" if self.pass_mask else "causal_lm(pass_mask=False)"


class HFLoss(nn.Module):
    """``loss_fn(model, batch) = model(**batch).loss``; GGN split at ``.logits`` (see the module)."""

    name = "hf"
    rtol = 1e-4  # agreement of .loss with the shifted CE of .logits (float32 logits, HF upcasts)

    def _call(self, model: nn.Module, batch: Any) -> Any:
        if not isinstance(batch, dict):
            raise LMLossError(f"hf_loss needs a dict batch to call model(**batch), got {type(batch).__name__}")
        return model(**batch)

    def outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """``model(**batch).logits``, checked to be the logits of the model's own loss (see the module)."""
        batch = _check_batch(batch, "hf_loss")
        out = self._call(model, batch)
        f = _logits_of(out, batch["input_ids"], "hf_loss")
        ref = self._loss_of(out)
        with torch.no_grad():
            mine = self.on_outputs(f, batch)
        if not torch.isclose(mine.double(), ref.detach().double(), rtol=self.rtol, atol=1e-6 * max(1.0, float(ref.abs()))):
            raise LMLossError(
                f"hf_loss: model(**batch).loss = {float(ref):.6g} is not the shifted next-token cross-entropy of "
                f".logits ({float(mine):.6g}), which the GGN/Fisher split assumes; use Hessian(...) with hf_loss(), "
                "or causal_lm() for the GGN")
        return f

    def on_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """Hugging Face's causal-LM loss of given logits: shifted CE, labels −100 ignored, mask not consulted."""
        batch = _check_batch(batch, "hf_loss")
        if batch.get("labels") is None:
            raise LMLossError("hf_loss: the batch has no 'labels' (for a causal LM: labels = input_ids, -100 on padding)")
        f = _logits_of(outputs, batch["input_ids"], "hf_loss")
        return _shifted_ce(f, shifted_targets(batch, use_mask=False), "hf_loss")

    def output_hessian(self, outputs: torch.Tensor, batch: Any) -> TokenOutputHessian:
        """``(diag p − p pᵀ)/N`` per predicted token of HF's causal-LM loss."""
        return _token_hessian(outputs, batch, "hf_loss", use_mask=False)

    @staticmethod
    def _loss_of(out: Any) -> torch.Tensor:
        loss = getattr(out, "loss", None)
        if not isinstance(loss, torch.Tensor):
            raise LMLossError("hf_loss: model(**batch) returned no .loss: put 'labels' in the batch "
                              "(for a causal LM labels = input_ids, -100 on padding)")
        return loss

    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self._loss_of(self._call(model, batch))

    def __repr__(self) -> str:
        return "hf_loss()"


def causal_lm(pass_mask: bool = True) -> CausalLM:
    """The next-token cross-entropy loss_fn on dict batches, ``name="ce"`` (see the module)."""
    return CausalLM(pass_mask)


def hf_loss() -> HFLoss:
    """``model(**batch).loss`` as a loss_fn, ``name="hf"`` (see the module)."""
    return HFLoss()
