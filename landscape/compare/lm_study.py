r"""The measurements of one seed for a language model (``[model] name = "tinylm"``): the tables of
:func:`landscape.compare.study.study_seed`, per *block* and in validation loss.

    tables["curvature"]    quantizer, bits, seed, loss ("ce": next-token cross-entropy), metric
                           (trace | lambda_max | loss | val_loss), value, stderr, converged
    tables["sensitivity"]  quantizer, bits, seed, loss, layer (a block: "0.attn", "0.mlp", …, "head"),
                           + the columns of landscape.sensitivity.block_damage
    tables["allocation"]   quantizer, seed, budget, strategy, draw, avg_bits, val_loss, allocation

Differences from the image study, and why:

- **Data**: every measurement is on fixed *validation* windows (the last 10 % of the text, never
  trained on): the curvature and the per-block damage on ``analysis_batches`` ×
  ``analysis_batch_size`` windows, the students' and the allocations' validation loss on
  ``eval_batches`` × ``analysis_batch_size`` windows (the first of which are the analysis ones).
- **Loss**: the shifted next-token cross-entropy (``landscape.losses.causal_lm``),
  nats per predicted token; lower is better, so the allocation claim reports loss reductions.
  No KL row: the teacher *is* the float model and the claims judge CE.
- **Blocks**: a transformer user thinks in blocks; each quantized parameter belongs to the block
  the ``[compare] blocks`` regex names (default ``blocks.(i).(attn|mlp)`` → ``"i.attn"``,
  ``"i.mlp"``), the rest to their own module (the head). Damage, prediction and allocation are
  per block (:func:`landscape.sensitivity.block_damage`).
- **Attention**: everything runs under the math SDPA kernel, whose backward is differentiable
  (the default CPU flash kernel has no double backward).
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape.checkpoints import teacher_from_file
from landscape.compare.settings import quantizer_pair, split_group
from landscape.compare.students import float_names
from landscape.compare.study import SeedTables, _allocations, _curvature_rows
from landscape.curvature import mean_loss
from landscape.curvature.batches import to_device
from landscape.data import load_dataset
from landscape.lm_teacher import get_lm_teacher, lm_settings
from landscape.losses import causal_lm
from landscape.quant import QuantizationWarning, coverage_report, forward_weights, quantize_model
from landscape.sensitivity import block_damage, quantized_weights
from landscape.sensitivity.errors import SensitivityError
from landscape.text_data import fixed_windows

__all__ = ["study_lm_seed", "lm_loss", "forward_parameters", "block_map", "lm_batches"]


def lm_loss():
    """The next-token loss ``loss(model, batch)``: :func:`landscape.losses.causal_lm`, the shifted
    cross-entropy on dict batches (the value of :func:`landscape.lm_teacher.next_token_loss`)."""
    return causal_lm()


def forward_parameters(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: ŵ}``: the value each quantized parameter of the student computes with
    (detached): :func:`landscape.quant.forward_weights` for the modules of :mod:`landscape.quant`
    (a layer's ``weight``; nn.MultiheadAttention's packed ``in_proj_weight``, its
    ``out_proj.weight`` in the child), and any other quantized layer as
    :func:`landscape.sensitivity.quantized_weights` finds it (``"<layer>.weight"``)."""
    out = {f"{layer}.weight": w for layer, w in quantized_weights(student)}
    out.update(forward_weights(student))
    return out


def block_map(names: list[str], pattern: str) -> dict[str, list[str]]:
    """``{block: [parameter names]}``: the regex, searched in each name as ``H.groups`` searches
    it, names a parameter's block by its captured groups joined by "."; an unmatched parameter
    belongs to its module (its name without the last part)."""
    rx = re.compile(pattern)
    blocks: dict[str, list[str]] = {}
    for n in names:
        m = rx.search(n)
        key = ".".join(g for g in m.groups() if g is not None) if m and m.groups() else (
            m.group(0) if m else n.rsplit(".", 1)[0])
        blocks.setdefault(key, []).append(n)
    return blocks


def lm_batches(data, settings: dict, context: int) -> tuple[list[dict], list[dict]]:
    """(analysis batches, evaluation batches): non-overlapping validation windows, the analysis
    batches first among the evaluation ones."""
    n = max(settings["eval_batches"], settings["analysis_batches"])
    every = fixed_windows(data.val, n, settings["analysis_batch_size"], context)
    return every[:settings["analysis_batches"]], every[:settings["eval_batches"]]


def _student(teacher, q: str, bits: int, a_bits) -> torch.nn.Module:
    """The weight-only student. The embeddings stay float by design (the LLM setting, and
    quantize_model has no embedding quantizer): its warning is dropped when they are all it
    names, and passed on otherwise."""
    base, group = split_group(q)
    weight, act = quantizer_pair(base)
    kwargs = {"group_size": group} if group else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuantizationWarning)
        student = quantize_model(teacher, bits, a_bits, weight=weight, act=act, **kwargs).requires_grad_(True)
    embeddings = {f"{n}.weight" for n, m in teacher.named_modules() if isinstance(m, torch.nn.Embedding)}
    only_embeddings = set(coverage_report(student).unsupported()) <= embeddings
    for w in caught:
        if not (issubclass(w.category, QuantizationWarning) and only_embeddings):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return student


@torch.no_grad()
def _val_loss_with(work: torch.nn.Module, values: dict[str, dict[str, torch.Tensor]], loss_fn, batches) -> float:
    """Validation loss of ``work`` (the float model) with each block's parameters replaced; restored after
    (bit for bit, so the one float copy serves every quantizer's damage and allocations)."""
    params = dict(work.named_parameters())
    saved = {n: params[n].detach().clone() for block in values.values() for n in block}
    try:
        for block in values.values():
            for n, v in block.items():
                params[n].copy_(v)
        return mean_loss(work, loss_fn, batches)
    finally:
        for n, v in saved.items():
            params[n].copy_(v)


def study_lm_seed(recipe: dict, settings: dict, seed: int, root: str | Path = "checkpoints", device: str = "cpu",
                  quantizers: list[str] | None = None) -> SeedTables:
    """Every measurement of one seed of a language-model recipe (see the module docstring)."""
    with sdpa_kernel(SDPBackend.MATH):
        return _study(recipe, settings, seed, root, device, quantizers)


def _study(recipe, settings, seed, root, device, quantizers) -> SeedTables:
    torch.manual_seed(seed)
    d = recipe["data"]
    data = load_dataset(d["name"], None, d["test_fraction"], d["split_seed"])
    _, t_file = get_lm_teacher(recipe, data, Path(root), seed, device)
    teacher = teacher_from_file(t_file, device).requires_grad_(False)
    batches, evals = lm_batches(data, settings, lm_settings(recipe)["context"])
    batches, evals = to_device((batches, evals), torch.device(device))
    loss_fn = lm_loss()
    float_model = copy.deepcopy(teacher)
    a_bits = settings["a_bits"]
    curvature, sensitivity, allocation = [], [], []
    for q in quantizers or settings["quantizers"]:
        forward: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        for bits in settings["bits"]:
            base = {"quantizer": q, "bits": bits, "seed": seed}
            student = _student(teacher, q, bits, bits if a_bits == "same" else a_bits).eval()
            curvature_params = float_names(student, teacher)
            curvature += _curvature_rows(student, curvature_params, {"ce": loss_fn}, batches, settings, base)
            curvature.append({**base, "loss": "ce", "metric": "val_loss", "value": mean_loss(student, loss_fn, evals),
                              "stderr": float("nan"), "converged": True})
            values = forward_parameters(student)
            if not values:
                raise SensitivityError(f"compare: quantizer {q!r} quantized no weight of the language model")
            blocks = block_map(list(values), settings["blocks"])
            table = block_damage(float_model, values, blocks, loss_fn, batches,
                                 trace_matvecs=settings["layer_trace_matvecs"], trace_rtol=settings["trace_rtol"],
                                 seed=seed)
            sensitivity.append(table.assign(quantizer=q, bits=bits, seed=seed, loss="ce"))
            forward[bits] = {b: {n: values[n] for n in names} for b, names in blocks.items()}
        damage = pd.concat([t for t in sensitivity if t["quantizer"].iloc[0] == q], ignore_index=True)
        allocation += _allocations(lambda values: _val_loss_with(float_model, values, loss_fn, evals), forward, damage,
                                   settings, {"quantizer": q, "seed": seed},
                                   np.random.default_rng([seed, settings["quantizers"].index(q)]), metric="val_loss")
    if settings["quantizers"][0] in (quantizers or settings["quantizers"]):
        curvature.append({"quantizer": "float", "bits": 32, "seed": seed, "loss": "ce", "metric": "val_loss",
                          "value": mean_loss(teacher, loss_fn, evals), "stderr": float("nan"), "converged": True})
    sens = pd.concat(sensitivity, ignore_index=True)
    front = ["quantizer", "bits", "seed", "loss", "layer"]
    return SeedTables(curvature=pd.DataFrame(curvature),
                      sensitivity=sens[front + [c for c in sens.columns if c not in front]],
                      allocation=pd.DataFrame(allocation))
