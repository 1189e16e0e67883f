"""Which layers a quantizer hurts, and how many bits each layer should get.

    from landscape.sensitivity import layer_damage, allocate_bits
    table = layer_damage(model, quantize_model(model, 4, None), cross_entropy(), batches)
    # layer, n_params, measured, first_order, second_order, taylor, trace_proxy (+ stderr), ...
    allocate_bits(costs, budget=4)        # {layer: bits}, exact (an integer programme)

:func:`layer_damage` (:mod:`.damage`) measures the loss increase of quantizing each layer alone
and predicts it from the gradient and the layer's Hessian block; :func:`allocate_bits`
(:mod:`.allocation`) picks per-layer bit widths minimising a total cost at a size budget;
:func:`forward_weight` (:mod:`.forward_weight`) finds the weight a quantized layer computes
with, for any quantizer.
"""

from landscape.sensitivity.allocation import allocate_bits, allocation_size
from landscape.sensitivity.block_damage import block_damage
from landscape.sensitivity.damage import COLUMNS, layer_damage
from landscape.sensitivity.errors import SensitivityError
from landscape.sensitivity.forward_weight import QUANTIZER_ATTRIBUTES, forward_weight, quantized_weights

__all__ = ["layer_damage", "block_damage", "allocate_bits", "allocation_size", "forward_weight", "quantized_weights",
           "SensitivityError", "COLUMNS", "QUANTIZER_ATTRIBUTES"]
