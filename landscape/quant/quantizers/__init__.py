r"""The field's quantizers, built in; each a small module of the quantizer interface
(:mod:`landscape.quant.interface`): ``Cls(bits)`` returns an nn.Module mapping a tensor to
its fake-quantized value, its straight-through estimator inside.

    name        weights                         activations
    uniform     UniformWeight (official grid)   UniformAct = ActQuant (EMA range)   the default
    lsq         LSQ (Esser et al. 2020)         LSQAct
    pact        -                               PACT (Choi et al. 2018)
    dorefa      DoReFaWeight (Zhou et al. 2016) -
    pow2        Pow2Weight (power-of-two)       -
    torch_ao    TorchAOWeight                   TorchAOAct (torch.ao FakeQuantize + observer)

``quantize_model(model, 4, 4, weight="lsq", act="pact")`` picks them by name; the classes are
importable from here to be used (or subclassed) directly.
"""

from landscape.quant.quantizers.dorefa import DoReFaWeight
from landscape.quant.quantizers.lsq import LSQ, LSQAct
from landscape.quant.quantizers.pact import PACT
from landscape.quant.quantizers.pow2 import Pow2Weight
from landscape.quant.quantizers.torch_ao import TorchAOAct, TorchAOWeight
from landscape.quant.quantizers.uniform import UniformAct, UniformWeight

__all__ = ["UniformWeight", "UniformAct", "LSQ", "LSQAct", "PACT", "DoReFaWeight", "Pow2Weight",
           "TorchAOWeight", "TorchAOAct"]
