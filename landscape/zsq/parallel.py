"""What changes when the trainer runs on N ranks (``landscape train RECIPE --nproc N``).

    par = DataParallel(distributed.current())     # serial: every method below is the identity
    student_model = par.wrap(student)             # DistributedDataParallel: gradients averaged
    z, y = generator.draw(par.global_size(B), sampler)   # the same global draw on every rank ...
    z, y = par.local(z), par.local(y)             # ... of which each rank takes its own block
    seen = par.mean({"loss_total": loss, ...})    # global means: logged, and checked for NaN on every rank
    acc = par.accuracy(student, x_test, y_test)   # each rank scores a share of the test set

One step on N ranks of B samples each is the step of one process on the N·B samples of the
global batch (effective batch N·B): every rank draws the *same* generator noise and labels (or
the same shuffled real batch) from the shared sampler and keeps its own block, so the sampler,
and with it the RNG state in a checkpoint, is the same on every rank -- rank 0's checkpoint
resumes every rank. DDP averages the gradients (mean over ranks of per-rank means = the global
mean), so GI's κ search, the momentum buffers, the optimizer step and the epoch-mean gradient
(``epoch_grad``) see the same, reduced gradient on every rank. During calibration epochs the
activation ranges are updated on the gathered global batch, exactly as one process would.
What is not the same as one process: per-rank BatchNorm statistics where BatchNorm runs in
training mode (the generator's layers, and the BNS loss on the teacher's inputs use each
rank's B samples; DDP averages the gradients of those per-rank losses).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from landscape.distributed import Context
from landscape.errors import LandscapeError
from landscape.models import count_correct, evaluate
from landscape.zsq.errors import TrainingError

__all__ = ["DataParallel", "batch_record", "effective_batch"]


def batch_record(world_size: int, batch_size: int) -> dict:
    """What config.json and every checkpoint of a data-parallel run say about its batch."""
    return {"world_size": world_size, "batch_per_rank": batch_size, "effective_batch": world_size * batch_size}


def effective_batch(config: dict) -> int:
    """Samples per optimizer step of a run, from its config.json: the :func:`batch_record` of a
    run on N ranks, else ``train.batch_size`` (the calibration batch of a PTQ run)."""
    value = (config.get("distributed") or {}).get("effective_batch", config["train"]["batch_size"])
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LandscapeError(f"config.json states effective_batch = {value!r}, not a whole number of samples >= 1: "
                             "the file was edited or is not the trainer's; restore it or retrain the run")
    return value


class DataParallel:
    """Data-parallel plumbing of one training run; a single process (``ctx.world_size == 1``)
    makes every method the identity, so the serial trainer is unchanged."""

    def __init__(self, ctx: Context | None = None):
        ctx = ctx or Context()
        self.ctx = ctx
        self.world, self.rank = ctx.world_size, ctx.rank
        self.active = ctx.world_size > 1

    @property
    def is_main(self) -> bool:
        """The rank that writes the run folder and shows progress."""
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """``DistributedDataParallel(module)`` (gradients averaged over ranks), or the module itself.

        Buffers are not broadcast: the student's (activation ranges, eval-mode BatchNorm) are kept
        equal by calibrating on the global batch; the generator's BatchNorm running statistics are
        used by nothing in training (the checkpoint holds rank 0's).
        """
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)

    def global_size(self, n: int) -> int:
        """Samples of one global batch: ``N × n``."""
        return n * self.world

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's block of a global batch (contiguous; blocks differ by at most one sample)."""
        return t if not self.active else torch.tensor_split(t, self.world)[self.rank]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The global batch from every rank's block (in rank order; equal block sizes)."""
        if not self.active:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        torch.distributed.all_gather(parts, x.detach().contiguous())
        return torch.cat(parts)

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scalars averaged over ranks (detached), in one all-reduce; a NaN or inf on any rank
        shows on every rank. Serial: ``values`` as given."""
        if not self.active:
            return values
        names = list(values)
        buf = torch.stack([values[k].detach().reshape(()).to(torch.float64) for k in names])
        torch.distributed.all_reduce(buf)
        buf /= self.world
        return {k: buf[i] for i, k in enumerate(names)}

    def accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 accuracy (%) on the whole of (x, y); each rank scores one block of it."""
        if not self.active:
            return evaluate(model, x, y)
        xs, ys = self.local(x), self.local(y)
        counts = torch.tensor([float(count_correct(model, xs, ys)), float(len(ys))], dtype=torch.float64,
                              device=next(model.parameters()).device)
        torch.distributed.all_reduce(counts)
        return 100.0 * int(counts[0]) / max(int(counts[1]), 1)

    def fingerprint_check(self, tensors: dict[str, dict[str, torch.Tensor]], where: str) -> None:
        """Raise on every rank if the ranks' ``{module: {name: tensor}}`` differ (the weights must
        stay bit-identical on every rank)."""
        if not self.active:
            return
        h = hashlib.sha256()
        for name, named in tensors.items():
            for key, t in named.items():
                t = t.detach().cpu().contiguous().reshape(-1)
                h.update(f"{name}.{key}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        from landscape.distributed import all_gather_objects

        prints = all_gather_objects(h.hexdigest())
        if len(set(prints)) > 1:
            odd = [r for r, p in enumerate(prints) if p != prints[0]]
            raise TrainingError(f"{where}: the weights of rank(s) {odd} differ from rank 0's: the ranks "
                                "drifted apart (a non-deterministic all-reduce or a rank-local change); "
                                "stopped before writing the checkpoint")
