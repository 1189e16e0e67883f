"""A Hugging Face GPT-2 (built offline from a tiny GPT2Config, float64) end to end in the curvature
engine: causal_lm and hf_loss, Hessian blocks against torch.func, q/k/v views of the packed Conv1D
``c_attn`` (cut along its columns), GGN through hf_loss. Skipped without the optional ``lm`` extra."""

import pytest
import torch

from landscape.curvature import GGN, Hessian, estimators
from landscape.losses import causal_lm, hf_loss
from lm_helpers import exact_hessian, flat_params

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 11, (2, 6), generator=g)
    batch = {"input_ids": ids, "labels": ids}
    names = [n for n, _ in model.named_parameters() if ".attn." in n]  # c_attn (packed q/k/v) and c_proj
    exact = exact_hessian(model, causal_lm(), names, batch)
    return model, batch, names, exact


def test_losses_agree_with_the_models_own_loss(gpt2):
    model, batch, *_ = gpt2
    own = model(**batch).loss
    torch.testing.assert_close(hf_loss()(model, batch), own)
    # HF computes its loss in float32 (logits.float()): causal_lm, in float64, agrees to float32 precision
    torch.testing.assert_close(causal_lm()(model, batch).float(), own.float(), rtol=1e-6, atol=1e-6)


def test_attention_hessian_and_qkv_views_equal_torch_func(gpt2):
    model, batch, names, exact = gpt2
    H = Hessian(model, causal_lm(), [batch])
    views = H.groups(r"h\.(\d+)\.(attn|mlp)", qkv=True)
    assert list(views) == ["0.attn", "0.attn.q", "0.attn.k", "0.attn.v", "0.mlp"]
    assert views["0.attn.k"].cuts[0] == (1, 8, 8)  # Conv1D stores (in, out): q, k, v are column thirds
    attn = views["0.attn"]
    assert attn.names == names
    scale = float(exact.abs().max())
    torch.testing.assert_close(attn.dense(), exact, rtol=0, atol=1e-12 * scale)
    W = model.transformer.h[0].attn.c_attn.weight
    widx = torch.arange(W.numel()).reshape(W.shape)
    bidx = W.numel() + torch.arange(W.shape[1])
    for i, tag in enumerate("qkv"):
        idx = torch.cat([widx[:, 8 * i : 8 * i + 8].reshape(-1), bidx[8 * i : 8 * i + 8]])
        assert float(views[f"0.attn.{tag}"].dense().trace()) == pytest.approx(float(exact[idx, idx].sum()), rel=1e-10)
    # the same probes on the engine's block and on the exact one give the same Hutchinson estimate
    est = attn.trace(max_matvecs=30, seed=4)
    assert est.value == pytest.approx(estimators.trace(exact, max_matvecs=30, seed=4).value, rel=1e-10)
    assert H.n_rebuilds == 1


def test_hf_loss_hessian_and_ggn(gpt2):
    model, batch, names, exact = gpt2
    Hh = Hessian(model, hf_loss(), [batch], params=names)
    # the model's own loss is float32: its Hessian matches the float64 one to float32 precision
    torch.testing.assert_close(Hh.dense(), exact, rtol=0, atol=1e-6 * float(exact.abs().max()))
    v = torch.randn(len(flat_params(model, [n for n, _ in model.named_parameters()])), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(GGN(model, hf_loss(), [batch]) @ v, GGN(model, causal_lm(), [batch]) @ v,
                               rtol=1e-12, atol=1e-14)
