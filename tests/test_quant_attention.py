"""Attention and every Linear-like layer quantized (issue 17): nn.MultiheadAttention's packed (and separate)
input projections and its out_proj, subclasses of nn.Linear, GPT-2's Conv1D; the weight-only coverage of a
2-block causal LM from torch.nn and of GPT-2."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.quant import (check_dequantization, coverage_report, forward_weights, frozen_rounding, integer_codes,
                             quantize_model)
from landscape.quant.quantizers import UniformWeight

from tests.lm_fixtures import TinyLM


def _fq(w, bits=4, group_size=None):
    return UniformWeight(bits, group_size=group_size)(w.detach())


def _mha_reference(mha, q, k, v, weights, **kw):
    """F.multi_head_attention_forward on (L, N, E) inputs with the given projection weights."""
    sep = "q_proj_weight" in weights
    out, attn = F.multi_head_attention_forward(
        q, k, v, mha.embed_dim, mha.num_heads, weights.get("in_proj_weight"), mha.in_proj_bias, mha.bias_k,
        mha.bias_v, mha.add_zero_attn, 0.0, weights["out_proj"], mha.out_proj.bias, training=False,
        use_separate_proj_weight=sep, q_proj_weight=weights.get("q_proj_weight"),
        k_proj_weight=weights.get("k_proj_weight"), v_proj_weight=weights.get("v_proj_weight"), **kw)
    return out, attn


@pytest.mark.parametrize("kdim", [None, 6])
@pytest.mark.parametrize("group_size", [None, 4])
def test_mha_forward_uses_the_fake_quantized_projections(kdim, group_size):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, kdim=kdim, vdim=kdim).double().eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.add_(0.1 * torch.randn_like(p))
    student = quantize_model(mha, 4, None, group_size=group_size)
    names = ["in_proj_weight"] if kdim is None else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    assert coverage_report(student).covered == names + ["out_proj.weight"]
    hand = {n: _fq(getattr(mha, n), 4, group_size) for n in names}
    hand["out_proj"] = _fq(mha.out_proj.weight, 4, group_size)
    q = torch.randn(5, 3, 8, dtype=torch.float64)
    kv = q if kdim is None else torch.randn(5, 3, kdim, dtype=torch.float64)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    ref, ref_attn = _mha_reference(mha, q, kv, kv, hand, attn_mask=mask)
    out, attn = student(q, kv, kv, attn_mask=mask)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0) and torch.allclose(attn, ref_attn, atol=1e-12, rtol=0)
    float_out, _ = mha(q, kv, kv, attn_mask=mask)
    assert (float_out - ref).abs().max() > 1e-3  # the quantization is visible
    with torch.no_grad():  # the fast path (no grad) computes with the same weights
        assert torch.allclose(student(q, kv, kv, attn_mask=mask)[0], ref, atol=1e-12, rtol=0)
    assert isinstance(student.in_proj_weight if kdim is None else student.q_proj_weight, nn.Parameter)
    # the STE: the gradient w.r.t. each float weight is the gradient w.r.t. its quantized value
    leaves = {n: w.clone().requires_grad_(True) for n, w in hand.items()}
    ref_loss = _mha_reference(mha, q, kv, kv, leaves, attn_mask=mask)[0].pow(2).sum()
    floats = [getattr(student, n) for n in names] + [student.out_proj.weight]
    got = torch.autograd.grad(student(q, kv, kv, attn_mask=mask)[0].pow(2).sum(), floats)
    want = torch.autograd.grad(ref_loss, list(leaves.values()))
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(got, want))
    assert dict(student.named_parameters()).keys() == dict(mha.named_parameters()).keys()


def test_mha_batch_first_and_only_out_proj():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    student = quantize_model(mha, 3, None, include="out_proj")
    assert coverage_report(student).covered == ["out_proj.weight"]
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    ref = _mha_reference(mha, x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1),
                         {"in_proj_weight": mha.in_proj_weight, "out_proj": _fq(mha.out_proj.weight, 3)})[0]
    assert torch.allclose(student(x, x, x, need_weights=False)[0], ref.transpose(0, 1), atol=1e-12, rtol=0)


def test_a_subclass_of_linear_keeps_its_class_and_its_forward():
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * F.linear(x, self.weight, self.bias)

    torch.manual_seed(2)
    model = nn.Sequential(Doubled(6, 4), nn.Linear(4, 3)).double()
    student = quantize_model(model, 4, None, group_size=3)
    assert isinstance(student[0], Doubled) and coverage_report(student).covered == ["0.weight", "1.weight"]
    x = torch.randn(5, 6, dtype=torch.float64)
    h = 2 * F.linear(x, _fq(model[0].weight, 4, 3), model[0].bias)
    assert torch.allclose(student(x), F.linear(h, _fq(model[1].weight, 4, 3), model[1].bias), atol=1e-12, rtol=0)
    assert isinstance(student[0].weight, nn.Parameter)  # restored after the forward
    assert student.state_dict().keys() == model.state_dict().keys()


def test_frozen_rounding_holds_the_attention_offsets():
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(8, 2).double().eval()
    student = quantize_model(mha, 3, None)
    x = torch.randn(4, 2, 8, dtype=torch.float64)
    before = student(x, x, x)[0]
    with frozen_rounding(student, [x], call=lambda m, b: m(b, b, b)):
        with torch.no_grad():
            student.in_proj_weight.add_(0.01)  # moves the weights, not the rounding
        inside = student(x, x, x)[0]
        shifted = dict(in_proj_weight=_fq(mha.in_proj_weight, 3) + 0.01, out_proj=_fq(mha.out_proj.weight, 3))
        assert torch.allclose(inside, _mha_reference(mha, x, x, x, shifted)[0], atol=1e-12, rtol=0)
        with torch.no_grad():
            student.in_proj_weight.sub_(0.01)
    assert torch.allclose(student(x, x, x)[0], before, atol=1e-12, rtol=0)


def test_weight_only_covers_every_matrix_of_a_causal_lm_outside_the_embeddings():
    torch.manual_seed(0)
    model = TinyLM().double()
    with pytest.warns(UserWarning, match=r"2 weight tensor\(s\) left in float: tok.weight .*pos.weight"):
        student = quantize_model(model, 4, None)
    matrices = [n for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("tok.", "pos."))]
    assert len(matrices) == 9 and coverage_report(student).covered == matrices
    ids = torch.randint(0, 11, (3, 6))
    out = student(ids)
    assert (out - model(ids)).abs().max() > 1e-3
    assert torch.isfinite(out).all()


def test_gpt2_conv1d_groups_along_the_input_and_weight_only_coverage():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(3, 8).double()  # nf = 3 outputs, nx = 8 inputs: weight (8, 3)
    student = quantize_model(conv, 2, None, group_size=4)
    expected = _fq(conv.weight.T, 2, 4).T  # groups of 4 inputs of each output
    assert torch.equal(student.quantized_weight(), expected)
    assert not torch.equal(expected, _fq(conv.weight, 2, 4))  # grouping the stored rows would differ
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert torch.allclose(student(x), x @ expected + conv.bias, atol=1e-12, rtol=0)

    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    gpt2 = transformers.GPT2LMHeadModel(config).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(gpt2, 4, None, group_size=8)
    report = coverage_report(q)
    matrices = [f"{n}.weight" for n, m in gpt2.named_modules()
                if isinstance(m, (Conv1D, nn.Linear)) or type(m).__name__ == "Conv1D"]
    assert len(matrices) == 2 * 4 + 1 and report.covered == matrices
    assert {n for n, r in report.unsupported().items()} == {"transformer.wte.weight", "transformer.wpe.weight"}
    ids = torch.randint(0, 50, (2, 7))
    c_attn = q.transformer.h[0].attn.c_attn
    assert torch.equal(c_attn.quantized_weight(), _fq(gpt2.transformer.h[0].attn.c_attn.weight.T, 4, 8).T)
    assert (q(ids).logits - gpt2(ids).logits).abs().max() > 1e-4


def test_codes_check_and_forward_weights_name_every_attention_tensor():
    torch.manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = quantize_model(TinyLM().double(), 3, None, group_size=4)
    names = coverage_report(student).covered
    assert list(forward_weights(student)) == names
    assert set(integer_codes(student)) == {n[:-len(".weight")] if n.endswith(".weight") else n for n in names}
    rows = check_dequantization(student)
    assert [r["layer"] for r in rows][:2] == ["blocks.0.attn.in_proj_weight", "blocks.0.attn.out_proj"]
    attn = student.blocks[0].attn
    assert torch.equal(forward_weights(student)["blocks.0.attn.in_proj_weight"],
                       _fq(attn.in_proj_weight, 3, 4))
    assert attn.quantized_parameters().keys() == {"in_proj_weight"}


def test_curvature_through_quantized_attention_is_the_exact_hessian_wrt_the_float_weights():
    from torch.func import functional_call, hessian
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from landscape.curvature import Hessian

    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = quantize_model(TinyLM(d=4, heads=1, n_blocks=1).double(), 4, None, group_size=2)
    ids = torch.randint(0, 11, (2, 6))
    names = ["blocks.0.attn.in_proj_weight", "blocks.0.attn.out_proj.weight"]
    params = {k: v.detach() for k, v in student.named_parameters()}

    def loss(*ws):
        return functional_call(student, {**params, **dict(zip(names, ws))}, (ids,)).logsumexp(-1).mean()

    with sdpa_kernel(SDPBackend.MATH):  # the engine's own choice of kernel is issue 17's item 1
        blocks = hessian(loss, argnums=(0, 1))(*(params[n] for n in names))
        exact = torch.cat([torch.cat([blocks[i][j].reshape(params[names[i]].numel(), -1) for j in range(2)], 1)
                           for i in range(2)])
        H = Hessian(student, lambda m, b: m(b[0]).logsumexp(-1).mean(), [(ids, ids)], params=names)
        v = torch.randn(exact.shape[0], dtype=torch.float64)
        assert torch.allclose(H @ v, exact @ v, atol=1e-12, rtol=0)
    assert exact.abs().max() > 1e-3


def test_a_transformer_encoder_layer_uses_the_quantized_weights_in_its_inference_mode_too():
    torch.manual_seed(6)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True).double().eval()
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = quantize_model(encoder, 3, None)
    assert len(coverage_report(student).covered) == 2 * 4
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    for kw in ({}, {"src_key_padding_mask": pad}):
        with_grad = student(x, **kw)  # the slow path: the quantized weights through every module's forward
        with torch.no_grad():         # torch's fast path would read the float weights itself
            assert torch.allclose(student(x, **kw), with_grad, atol=1e-12, rtol=0)
            assert (encoder(x, **kw) - with_grad).abs().max() > 1e-3
