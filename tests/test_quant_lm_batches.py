"""Activations of a language model (issue 17): one warning naming what stays in float (GELU modules,
functional calls read from the source when torch.fx cannot trace), no torch.fx or ReLU warning for a model
without ReLUs; calibrate and frozen_rounding on dict batches."""

import inspect
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.quant import (FrozenRoundingError, QuantizationWarning, QuantizerError, act_quantizers, calibrate,
                             frozen_rounding, quantize_model)

from tests.lm_fixtures import TinyLM


def _messages(model, a_bits):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        student = quantize_model(model, 4, a_bits)
    return student, [str(w.message) for w in record if issubclass(w.category, QuantizationWarning)]


def test_a_gelu_lm_gets_one_activation_warning_and_none_about_fx_or_relus():
    _, messages = _messages(TinyLM(), 4)
    acts = [m for m in messages if "activation(s) cannot be quantized in place" in m]
    assert len(acts) == 1 and len(messages) == 2  # and the embeddings' weight warning
    assert "2 activation(s)" in acts[0] and "`blocks.0.mlp.1` (nn.GELU), `blocks.1.mlp.1` (nn.GELU)" in acts[0]
    assert not any("torch.fx" in m or "functional ReLU" in m or "shared by all" in m for m in messages)
    _, weights_only = _messages(TinyLM(), None)
    assert not any("activation" in m for m in weights_only)


class FunctionalMLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)) + torch.nn.functional.silu(self.up(x)))


def test_functional_activations_are_read_from_the_source_when_fx_cannot_trace():
    model = TinyLM()
    for block in model.blocks:
        block.mlp = FunctionalMLP(8)
    _, messages = _messages(model, 4)
    (act,) = [m for m in messages if "activation(s)" in m]
    line = inspect.getsourcelines(FunctionalMLP.forward)[1] + 1
    assert "2 activation(s)" in act
    assert (f"F.gelu in `blocks.0.mlp`, `blocks.1.mlp` (FunctionalMLP.forward, test_quant_lm_batches.py:{line}); "
            f"F.silu in `blocks.0.mlp`, `blocks.1.mlp` (FunctionalMLP.forward, test_quant_lm_batches.py:{line})") in act
    assert not any("torch.fx" in m for m in messages)


def test_gpt2_names_its_gelu_modules_and_nothing_about_fx():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    _, messages = _messages(transformers.GPT2LMHeadModel(config), 4)
    (act,) = [m for m in messages if "activation(s)" in m]
    assert "`transformer.h.0.mlp.act` (NewGELUActivation), `transformer.h.1.mlp.act` (NewGELUActivation)" in act
    assert not any("torch.fx" in m or "ReLU module" in m for m in messages)


class MaskedLM(TinyLM):
    """Takes an attention_mask (and records it), as a Hugging Face model does."""

    def forward(self, input_ids, attention_mask=None):
        self.seen = attention_mask
        return super().forward(input_ids)


def _relu_lm(cls=TinyLM):
    torch.manual_seed(0)
    with pytest.warns(QuantizationWarning, match="torch.fx cannot trace"):  # it has ReLU modules: said, precisely
        return quantize_model(cls(act=nn.ReLU).double(), 4, 4)


def _ranges(student):
    return [(float(q.lo), float(q.hi)) for _, q in act_quantizers(student)]


def test_calibrate_takes_dict_tuple_and_tensor_batches_alike():
    ids = [torch.randint(0, 11, (3, 6)) for _ in range(2)]
    by_dict, by_tuple, by_tensor = _relu_lm(), _relu_lm(), _relu_lm()
    calibrate(by_dict, [{"input_ids": i} for i in ids])
    calibrate(by_tuple, [(i, i) for i in ids])
    calibrate(by_tensor, ids)
    assert len(_ranges(by_dict)) == 2 and all(hi > lo for lo, hi in _ranges(by_dict))
    assert _ranges(by_dict) == _ranges(by_tuple) == _ranges(by_tensor)
    # by hand: the EMA (momentum 0.9) of the two batches' min/max after the first block's ReLU
    model = by_dict.blocks[0]
    highs = []
    for i in ids:
        x = by_dict.tok(i) + by_dict.pos(torch.arange(6))
        h = x + model.attn(model.ln1(x), model.ln1(x), model.ln1(x), need_weights=False,
                           attn_mask=torch.triu(torch.ones(6, 6, dtype=torch.bool), 1))[0]
        highs.append(float(torch.relu(model.mlp[0](model.ln2(h))).max()))
    assert _ranges(by_dict)[0][1] == pytest.approx(0.9 * highs[0] + 0.1 * highs[1], rel=1e-12)


def test_calibrate_passes_the_attention_mask_and_says_when_the_model_takes_none():
    student = _relu_lm(MaskedLM)
    mask = torch.ones(3, 6, dtype=torch.long)
    calibrate(student, [{"input_ids": torch.randint(0, 11, (3, 6)), "attention_mask": mask}])
    assert student.seen is mask
    plain = _relu_lm()
    with pytest.raises(QuantizerError, match="calibrate: TinyLM.forward takes no attention_mask; pass call="):
        calibrate(plain, [{"input_ids": torch.randint(0, 11, (3, 6)), "attention_mask": mask}])
    calibrate(plain, [{"input_ids": torch.randint(0, 11, (3, 6)), "attention_mask": mask}],
              call=lambda m, b: m(b["input_ids"]))
    assert all(hi > lo for lo, hi in _ranges(plain))
    with pytest.raises(QuantizerError, match="a batch must be x, .x, y, .... or a dict of tensors"):
        calibrate(plain, [(None, 1)])


def test_frozen_rounding_on_dict_batches_with_group_quantizers():
    student = _relu_lm()
    batches = [{"input_ids": torch.randint(0, 11, (2, 6))} for _ in range(2)]
    calibrate(student, batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grouped = quantize_model(TinyLM(act=nn.ReLU).double(), 3, 3, group_size=4)
    calibrate(grouped, batches)
    for model in (student, grouped):
        before = [model(b["input_ids"]) for b in batches]
        with frozen_rounding(model, batches):
            w = model.blocks[0].attn.in_proj_weight
            with torch.no_grad():
                w.add_(1e-3)  # within the block the rounding stays that of θ: the output moves smoothly
            moved = model(batches[1]["input_ids"])
            assert 0 < (moved - before[1]).abs().max() < 1e-2
            with torch.no_grad():
                w.sub_(1e-3)
            assert torch.allclose(model(batches[0]["input_ids"]), before[0], atol=1e-12, rtol=0)
            assert torch.allclose(model(input_ids=batches[1]["input_ids"]), before[1], atol=1e-12, rtol=0)
            with pytest.raises(FrozenRoundingError, match="not one of the 2 batches"):
                model(torch.randint(0, 11, (2, 6)))


def test_torch_transformer_layers_name_their_functional_activation():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)  # F.relu inside
    _, messages = _messages(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), 4)
    (act,) = [m for m in messages if "activation(s)" in m]
    assert ("2 activation(s)" in act and "`layers.0` (nn.TransformerEncoderLayer's relu), "
            "`layers.1` (nn.TransformerEncoderLayer's relu)" in act)
    assert "A functional ReLU" not in act  # a module's inner call: no nn.ReLU to put there
