"""causal_lm() and hf_loss(): values against a hand computation, output Hessians and the GGN
against torch.func references in float64, and the errors a user meets."""

import dataclasses

import pytest
import torch
from torch import nn

from landscape import losses
from landscape.curvature import GGN, Fisher
from landscape.errors import LandscapeError
from landscape.lm_losses import LMLossError, TokenOutputHessian, shifted_targets
from lm_helpers import (flat_params, functional_call, hand_causal_ce, lm_batches, make_lm, ref_ggn_products,
                        reference_mode, unflatten)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, robust on a shared machine


def test_reexported_from_losses_with_names_and_repr():
    assert losses.causal_lm().name == "ce" and losses.hf_loss().name == "hf"
    assert repr(losses.causal_lm()) == "causal_lm()"
    assert repr(losses.causal_lm(pass_mask=False)) == "causal_lm(pass_mask=False)"
    assert repr(losses.hf_loss()) == "hf_loss()"
    assert isinstance(losses.causal_lm(), nn.Module) and isinstance(losses.hf_loss(), nn.Module)
    assert {"causal_lm", "hf_loss"} <= set(losses.__all__)


@pytest.mark.parametrize("pad,labels", [(False, False), (True, False), (False, True), (True, True)])
def test_causal_lm_equals_hand_computation(pad, labels):
    model = make_lm()
    loss = losses.causal_lm()
    for batch in lm_batches(pad=pad, labels=labels):
        f = loss.outputs(model, batch)
        got = loss(model, batch)
        assert got.dim() == 0
        torch.testing.assert_close(got, hand_causal_ce(f, batch), rtol=1e-13, atol=1e-13)


def test_padding_changes_the_loss_and_reaches_the_model():
    """The mask both selects the loss's tokens and is passed to the model (pass_mask=False: loss only)."""
    model = make_lm()
    batch = lm_batches(pad=True, labels=False)[0]
    masked, unmasked = losses.causal_lm()(model, batch), losses.causal_lm()(model, {"input_ids": batch["input_ids"]})
    assert abs(float(masked) - float(unmasked)) > 1e-3
    # right padding with a causal model: the real tokens' logits do not see the pads, so passing the
    # mask to the model or not gives the same loss on the real tokens
    torch.testing.assert_close(losses.causal_lm(pass_mask=False)(model, batch), masked, rtol=1e-12, atol=1e-12)


def test_model_without_mask_argument_and_bad_batches():
    class NoMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = make_lm()

        def forward(self, input_ids):
            return self.inner(input_ids)

    model, batch = NoMask(), lm_batches(pad=True)[0]
    with pytest.raises(LMLossError, match=r"pass_mask=False"):
        losses.causal_lm()(model, batch)
    assert torch.isfinite(losses.causal_lm(pass_mask=False)(model, batch))
    loss = losses.causal_lm()
    with pytest.raises(LandscapeError, match=r"dict batch.*cross_entropy"):
        loss(model, (batch["input_ids"], batch["input_ids"]))
    with pytest.raises(LMLossError, match=r"input_ids"):
        loss(model, {"ids": batch["input_ids"]})
    with pytest.raises(LMLossError, match=r"T >= 2"):
        loss(model, {"input_ids": batch["input_ids"][:, :1]})
    with pytest.raises(LMLossError, match=r"labels.*shaped like input_ids"):
        loss(model, {"input_ids": batch["input_ids"], "labels": batch["input_ids"][:, :3]})
    with pytest.raises(LMLossError, match=r"no predicted token"):
        loss(model, {"input_ids": batch["input_ids"], "labels": torch.full_like(batch["input_ids"], -100)})
    with pytest.raises(LMLossError, match=r"outside the vocabulary"):
        loss(model, {"input_ids": batch["input_ids"], "labels": batch["input_ids"] + 50})
    with pytest.raises(LMLossError, match=r"logits must have shape \(B, T, V\)"):
        loss(lambda ids: ids.double(), {"input_ids": batch["input_ids"]})  # (B, T): not logits


def test_cross_entropy_on_a_dict_batch_points_to_causal_lm():
    from landscape.curvature import CurvatureError, Hessian

    model, batches = make_lm(), lm_batches()
    with pytest.raises(TypeError, match=r"got dict: for a dict batch .*causal_lm\(\)"):
        losses.cross_entropy()(model, batches[0])
    with pytest.raises(CurvatureError, match=r"causal_lm\(\)"):
        Hessian(model, losses.cross_entropy(), batches) @ torch.zeros(sum(p.numel() for p in model.parameters()),
                                                                       dtype=torch.float64)


def test_token_output_hessian_equals_torch_func_hessian():
    """apply() and dense() against torch.func.hessian of on_outputs w.r.t. the logits (zero rows included)."""
    model, loss = make_lm(), losses.causal_lm()
    batch = lm_batches(pad=True, labels=True)[0]
    f = loss.outputs(model, batch).detach()
    M = loss.output_hessian(f, batch)
    assert isinstance(M, TokenOutputHessian)
    B, T, V = f.shape
    ref = torch.func.hessian(lambda ff: loss.on_outputs(ff, batch))(f).reshape(B * T * V, B * T * V)
    W = torch.randn(4, B, T, V, dtype=torch.float64)
    for w in W:
        torch.testing.assert_close(M.apply(w).reshape(-1), ref @ w.reshape(-1), rtol=1e-12, atol=1e-14)
    blocks = torch.block_diag(*M.dense())
    torch.testing.assert_close(blocks, ref, rtol=1e-12, atol=1e-14)
    G = M.fisher_factors()  # exact expectation: Σ_k G_k G_kᵀ per row = the block
    per_row = torch.einsum("kri,krj->rij", G.reshape(G.shape[0], B * T, V), G.reshape(G.shape[0], B * T, V))
    torch.testing.assert_close(torch.block_diag(*per_row), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("attn", ["mha", "sdpa"])
def test_ggn_and_fisher_equal_exact_jt_h_j(attn):
    model, loss = make_lm(attn=attn, n_blocks=1), losses.causal_lm()
    batches = lm_batches(pad=True, labels=True)
    names = [n for n, _ in model.named_parameters()]
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    with reference_mode():  # the references differentiate attention twice
        ref = ref_ggn_products(model, loss, batches, names, V)
    tol = 1e-12 * float(ref.abs().max())
    assert float(ref.abs().max()) > 1e-3
    torch.testing.assert_close(GGN(model, loss, batches) @ V, ref, rtol=0, atol=tol)
    torch.testing.assert_close(Fisher(model, loss, batches) @ V, ref, rtol=0, atol=tol)


def test_empirical_fisher_is_per_sequence():
    """(1/B) Σ_i ∇ℓ_i ∇ℓ_iᵀ with ℓ_i = B · (sequence i's summed token CE)/N, from torch.func per sequence."""
    from landscape.curvature import EmpiricalFisher

    model, loss = make_lm(n_blocks=1), losses.causal_lm()
    batch = lm_batches(sizes=(3,), pad=True, labels=True)[0]
    names = [n for n, _ in model.named_parameters()]
    theta = flat_params(model, names)
    tgt = shifted_targets(batch)
    B, N = tgt.shape[0], int((tgt != -100).sum())

    def ell(th, i):
        f = loss.outputs(lambda *a, **k: functional_call(model, unflatten(model, names, th), a, k), batch)
        ce = torch.nn.functional.cross_entropy(f[i, :-1], tgt[i], ignore_index=-100, reduction="sum")
        return B * ce / N

    with reference_mode():
        grads = torch.stack([torch.func.grad(ell)(theta, i) for i in range(B)])
    v = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ref = grads.T @ (grads @ v) / B
    torch.testing.assert_close(EmpiricalFisher(model, loss, [batch]) @ v, ref, rtol=0,
                               atol=1e-12 * float(ref.abs().max()))


# ---------------------------------------------------------------------------- hf_loss
@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class HFLike(nn.Module):
    """A model with Hugging Face's calling convention: model(**batch) -> .logits, .loss (labels given)."""

    def __init__(self, smoothing: float = 0.0):
        super().__init__()
        self.inner = make_lm()
        self.smoothing = smoothing

    def forward(self, input_ids, attention_mask=None, labels=None):
        f = self.inner(input_ids, attention_mask)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(f[:, :-1].reshape(-1, f.shape[-1]), labels[:, 1:].reshape(-1),
                                               ignore_index=-100, label_smoothing=self.smoothing)
        return Out(f, loss)


def test_hf_loss_is_the_models_loss_and_its_ggn_is_causal_lms():
    model = HFLike()
    batches = lm_batches(pad=False, labels=True)
    for b in batches:
        torch.testing.assert_close(losses.hf_loss()(model, b), model(**b).loss)
        # without padding both losses are the same function of the logits
        torch.testing.assert_close(losses.hf_loss()(model, b), losses.causal_lm()(model, b), rtol=1e-13, atol=1e-13)
    names = [n for n, _ in model.named_parameters()]
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(4))
    with reference_mode():
        ref = ref_ggn_products(model, losses.hf_loss(), batches, names, V)
    torch.testing.assert_close(GGN(model, losses.hf_loss(), batches) @ V, ref, rtol=0,
                               atol=1e-12 * float(ref.abs().max()))


def test_hf_loss_refuses_what_it_cannot_split():
    batch = lm_batches(pad=False, labels=True)[0]
    with pytest.raises(LMLossError, match=r"no \.loss.*labels"):
        losses.hf_loss()(HFLike(), {"input_ids": batch["input_ids"]})
    with pytest.raises(LMLossError, match=r"dict batch"):
        losses.hf_loss()(HFLike(), (batch["input_ids"],))
    smoothed = HFLike(smoothing=0.1)
    assert torch.isfinite(losses.hf_loss()(smoothed, batch))  # the Hessian of its own loss is fine
    with pytest.raises(ValueError, match=r"not the shifted next-token cross-entropy"):
        GGN(smoothed, losses.hf_loss(), [batch]) @ torch.zeros(sum(p.numel() for p in smoothed.parameters()),
                                                               dtype=torch.float64)
