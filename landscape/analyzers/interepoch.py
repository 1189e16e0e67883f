"""Inter-epoch gradient cosine (METHOD.md §2.5): does the gradient keep pointing the same way?

The paper's metric (``metric="interepoch_cosine"``, ``loss="train"``)::

    cos(ḡ(t), ḡ(t−1)),   ḡ(t) = (1/K) Σ_k ∇θ L_train(θ_k; batch_k)   over the K optimizer steps of epoch t

the mean of the training-loss gradients of all the steps of an epoch (before gradient
inundation and momentum), which the trainer accumulates and stores in each checkpoint
(``epoch_grad``). A value near 1 means successive epochs push the student the same way: it
has not reached a minimum. Warm-up epochs (no student step) have no mean gradient and no row.

A second, different metric (``metric="interepoch_cosine_fixed_batches"``, the analysed loss,
default KL): the gradients at two consecutive checkpoints *on the same batches* (the later
epoch's stored analysis batches), cos(∇L(θ_{t−1}; B_t), ∇L(θ_t; B_t)). It isolates the change
of the weights from the change of samples, but it is not the paper's quantity.

A pairwise analysis: each epoch is compared with the previous *available* epoch, named in
column ``prev_epoch``; rows for the whole model (``layer="all"``) and, with ``per_layer``,
per layer.
"""

from __future__ import annotations

import torch

from landscape.analyzers._common import AnalysisError, Point, flat_gradient
from landscape.curvature import cosine, layer_slices
from landscape.analyzers.tidy import row

NAME = "interepoch"
VERSION = 2
PAIRWISE = True


def state(point: Point, cfg: dict) -> dict:
    s = cfg[NAME]
    names = point.param_names()
    out = {"names": names, "layers": layer_slices(point.model, names) if s["per_layer"] else [],
           "epoch_grad": point.extras.get("epoch_grad", "absent"), "source": point.source,
           "process_group": point.process_group}
    if s["fixed_batches"] and s["loss"] in point.available([s["loss"]]):
        out.update(model=point.model, batches=point.batches, loss_fn=point.loss(s["loss"]),
                   grad=flat_gradient(point, s["loss"], names))
    return out


def _mean_gradient(st: dict, epoch) -> tuple[list[str], torch.Tensor] | None:
    eg = st["epoch_grad"]
    if isinstance(eg, str):
        raise AnalysisError(f"{st['source']} holds no epoch-mean gradient (it was written before landscape 0.2 "
                            "stored one); retrain the run with this version for the paper's inter-epoch metric")
    if eg is None:
        return None  # a warm-up epoch: no student step
    return list(eg["names"]), torch.as_tensor(eg["mean"]).double()


def _rows(meta, loss, metric, a, b, layers, prev_epoch) -> list[dict]:
    rows = [row(meta, loss=loss, metric=metric, value=cosine(a, b), prev_epoch=prev_epoch)]
    for layer, sl in layers:
        rows.append(row(meta, loss=loss, layer=layer, metric=metric, value=cosine(a[sl], b[sl]),
                        prev_epoch=prev_epoch))
    return rows


def compare(prev: dict, cur: dict, meta: dict, prev_epoch: int, cfg: dict) -> list[dict]:
    from landscape.curvature import gradient

    s = cfg[NAME]
    if prev["names"] != cur["names"]:
        raise AnalysisError(f"run {meta.get('run')}: epochs {prev_epoch} and {meta.get('epoch')} have different "
                            "parameters; the inter-epoch cosine needs the same model")
    rows = []
    a, b = _mean_gradient(prev, prev_epoch), _mean_gradient(cur, meta.get("epoch"))
    if a is not None and b is not None:
        if a[0] != cur["names"] or b[0] != cur["names"]:
            raise AnalysisError(f"{cur['source']}: the stored epoch-mean gradient covers other parameters than "
                                "the student's; the checkpoint does not belong to this model")
        rows += _rows(meta, "train", "interepoch_cosine", a[1], b[1], cur["layers"], prev_epoch)
    if "grad" in cur and "model" in prev:
        g_prev = gradient(prev["model"], cur["loss_fn"], cur["batches"], params=prev["names"],
                          process_group=cur["process_group"])
        rows += _rows(meta, s["loss"], "interepoch_cosine_fixed_batches", torch.as_tensor(g_prev),
                      cur["grad"], cur["layers"], prev_epoch)
    return rows
