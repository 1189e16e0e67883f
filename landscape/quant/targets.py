"""Which weight tensors :func:`~landscape.quant.quantize_model` quantizes, module by module.

    module                                   tensors quantized          forward
    nn.Conv2d, nn.Linear (exactly)           weight                     QuantConv2d / QuantLinear
    any other subclass of nn.Linear or       weight                     F.linear / the convolution on ŵ
      nn.Conv2d (MHA's out_proj, a                                      (a forward of its own: run on
      NonDynamicallyQuantizableLinear)                                  ŵ swapped in, under a lock)
    GPT-2's Conv1D (transformers), weight    weight (channels/groups    torch.addmm on ŵ (as its forward)
      stored (in, out)                         along the stored rows' transpose)
    nn.MultiheadAttention                    in_proj_weight, or         F.multi_head_attention_forward
                                               q/k/v_proj_weight          on ŵ and on out_proj's ŵ, which
                                               (kdim/vdim ≠ embed_dim)    it reads without calling out_proj

torch's nn.TransformerEncoderLayer has an inference fast path (eval mode, no grad) that reads
its children's float weights itself, bypassing their forwards: :func:`close_fast_paths` turns
it off in a student (its flag ``activation_relu_or_gelu`` = 0, which only the fast path reads;
nn.TransformerEncoder's ``use_nested_tensor`` = False), so the quantized weights are used in
every mode.

A module already fake-quantized (a student of quantize_model, a torch.ao QAT module) or whose
``weight`` is not a plain parameter (a parametrization) is left alone, with its reason in the
coverage report. A *weight tensor* of the coverage report is every parameter called ``weight``
and the projection weights of nn.MultiheadAttention.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

MHA_PACKED = ("in_proj_weight",)
MHA_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass(frozen=True)
class Target:
    """One module quantize_model converts: its name, the parameters it quantizes, and whether
    its weight is stored transposed, (in, out)."""

    name: str
    module: nn.Module
    params: tuple[str, ...]
    transposed: bool = False


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D`` (a linear layer with weight (in, out)),
    recognised without importing transformers."""
    cls = type(module)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and getattr(module, "weight", None) is not None and module.weight.dim() == 2)


def _plain(module: nn.Module, param: str) -> bool:
    return isinstance(module._parameters.get(param), nn.Parameter)


def already_quantized(module: nn.Module) -> bool:
    """A module of a student (quantize_model) or a torch.ao QAT module (``weight_fake_quant``)."""
    from landscape.quant.modules import _QuantWeight

    return isinstance(module, _QuantWeight) or hasattr(module, "weight_fake_quant")


def target_of(name: str, module: nn.Module) -> Target | None:
    """The :class:`Target` for ``module``, or None when quantize_model leaves it in float."""
    if already_quantized(module):
        return None
    if isinstance(module, nn.MultiheadAttention):
        params = MHA_PACKED if module._qkv_same_embed_dim else MHA_SEPARATE
        return Target(name, module, params) if all(_plain(module, p) for p in params) else None
    if isinstance(module, (nn.Linear, nn.Conv2d)) and _plain(module, "weight"):
        return Target(name, module, ("weight",))
    if is_conv1d(module) and _plain(module, "weight"):
        return Target(name, module, ("weight",), transposed=True)
    return None


def weight_targets(model: nn.Module) -> list[Target]:
    """Every module of ``model`` quantize_model can quantize, in module order."""
    return [t for n, m in model.named_modules() if (t := target_of(n, m)) is not None]


def weight_tensors(module: nn.Module) -> list[str]:
    """The names of ``module``'s own weight tensors (the coverage report's unit)."""
    own = MHA_PACKED + MHA_SEPARATE if isinstance(module, nn.MultiheadAttention) else ("weight",)
    return [p for p in own if module._parameters.get(p) is not None]


def close_fast_paths(student: nn.Module) -> None:
    """Turn off the fast paths of torch's transformer layers that hold quantized modules (see
    the module docstring); the slow path they fall back to computes the same function."""
    from landscape.quant.modules import _QuantWeight

    for m in student.modules():
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerEncoder)) \
                and any(isinstance(c, _QuantWeight) for c in m.modules()):
            if isinstance(m, nn.TransformerEncoderLayer):
                m.activation_relu_or_gelu = 0
            else:
                m.use_nested_tensor = False
