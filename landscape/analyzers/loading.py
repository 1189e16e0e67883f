"""From a checkpoint file to an analysed :class:`~landscape.analyzers._common.Point`.

The student is rebuilt (eval mode, quantizer state restored) with that epoch's stored analysis
batches and the losses ``{"ce": cross_entropy(), "kl": kl_to_teacher(teacher, T, reduction)}``
(T and the reduction stored in the checkpoint). The teacher is needed by the KL alone: when
its file is missing or was replaced, the KL is marked unavailable (with the reason) and the
analyses of the CE still run. The checkpoint's own checks (format, integrity, identity against
its run folder) are :func:`landscape.checkpoints.load_checkpoint`'s.
"""

from __future__ import annotations

from pathlib import Path

from landscape.analyzers._common import AnalysisError, Point

__all__ = ["CheckpointLoader"]


class CheckpointLoader:
    """Builds points from checkpoints; the teacher is rebuilt once per (file, hash)."""

    def __init__(self, device, max_batches: int, process_group=None):
        self.device = device
        self.max_batches = max_batches
        self.process_group = process_group  # the points' (see Point): False = this process's batches alone
        self._teachers: dict = {}

    def _teacher(self, ckpt):
        from landscape.checkpoints import rebuild_teacher

        ref = ckpt.get("teacher") or {}
        key = (str(ref.get("path")), str(ref.get("sha256")))
        if key not in self._teachers:
            teacher = rebuild_teacher(ckpt, device=self.device).eval().requires_grad_(False)
            self._teachers = {key: teacher}  # keep one: runs rarely share teachers mid-call
        return self._teachers[key]

    def load(self, path: Path, meta: dict, identity: str, need_kl: bool = True) -> Point:
        """The point of checkpoint ``path``; ``identity`` seeds its probes (a content hash)."""
        from landscape import losses
        from landscape.checkpoints import CheckpointError, analysis_batches, load_checkpoint, rebuild_student

        ckpt = load_checkpoint(path)
        student = rebuild_student(ckpt, device=self.device).eval()
        batches = list(analysis_batches(ckpt, self.device))
        if self.max_batches:
            batches = batches[: self.max_batches]
        if not batches:
            raise AnalysisError(f"{path}: the checkpoint holds no analysis batches")
        point = Point(student, {"ce": losses.cross_entropy()}, batches, meta=dict(meta),
                      identity=ckpt.get("content_hash") or identity, source=str(path),
                      process_group=self.process_group)
        if need_kl:
            try:
                point.losses["kl"] = losses.kl_to_teacher(
                    self._teacher(ckpt), temperature=float(ckpt.get("temperature") or 1.0),
                    reduction=ckpt.get("kl_reduction") or "batchmean")
            except CheckpointError as exc:
                point.losses["kl"] = None
                point.unavailable["kl"] = str(exc)
        if "epoch_grad" in ckpt:
            point.extras["epoch_grad"] = ckpt["epoch_grad"]
        return point
