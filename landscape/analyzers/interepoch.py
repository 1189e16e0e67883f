"""Inter-epoch gradient cosine (METHOD.md §2.5): does the KL gradient keep pointing the same way?

    cos(ḡ(t), ḡ(t−1)),   ḡ(t) = ∇θ KL at the epoch-t checkpoint, mean over that epoch's
                                 stored analysis batches

The paper averages the gradient over an epoch's training steps; the checkpoints hold the
end-of-epoch weights and a fixed batch set per epoch, so we take the gradient there. A value
near 1 means successive epochs push the student the same way: it has not reached a minimum.
A pairwise analysis: each epoch is compared with the previous *available* epoch, named in
column ``prev_epoch``.

Rows: ``loss`` (default ``"kl"``), ``metric="interepoch_cosine"``, ``layer="all"`` and per layer.
"""

from __future__ import annotations

from landscape.analyzers._common import AnalysisError, Point, cosine, flat_gradient, layer_slices, row

NAME = "interepoch"
VERSION = 1
PAIRWISE = True


def state(point: Point, cfg: dict):
    loss = cfg[NAME]["loss"]
    if loss not in point.losses:
        raise AnalysisError(f"[analysis.interepoch] loss = {loss!r}: not one of the losses "
                            f"{sorted(point.losses)}")
    names = point.param_names()
    g = flat_gradient(point, loss, names)
    layers = layer_slices(point.model, names) if cfg[NAME]["per_layer"] else []
    return {"names": names, "grad": g, "layers": layers}


def compare(prev, cur, meta: dict, prev_epoch: int, cfg: dict) -> list[dict]:
    loss = cfg[NAME]["loss"]
    if prev["names"] != cur["names"]:
        raise AnalysisError(f"run {meta.get('run')}: epochs {prev_epoch} and {meta.get('epoch')} "
                            "have different parameters; the inter-epoch cosine needs the same model")
    rows = [row(meta, loss=loss, metric="interepoch_cosine", value=cosine(prev["grad"], cur["grad"]),
                prev_epoch=prev_epoch)]
    for layer, sl in cur["layers"]:
        rows.append(row(meta, loss=loss, layer=layer, metric="interepoch_cosine",
                        value=cosine(prev["grad"][sl], cur["grad"][sl]), prev_epoch=prev_epoch))
    return rows
