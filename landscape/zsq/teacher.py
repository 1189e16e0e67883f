"""The full-precision teacher: trained once per (data, model, teacher settings, seed), or
loaded from a user's pretrained weights, and cached.

Cache file: ``<out>/teachers/<data>-<model>-<hash8>-seed<S>.pt`` (format
"landscape-teacher", sealed with a content hash), where hash8 covers the data, model and
teacher sections of the recipe (not the data root); with ``[teacher] weights = "PATH"`` it
covers the weights file's sha256 instead of the training settings (see
:mod:`landscape.pretrained` for the accepted layouts). Either way the run's checkpoints
reference the cache file by its sha256. Training: SGD momentum 0.9, cosine decay to 0,
weight decay, random crop (pad 4) and horizontal flip for 32x32 colour images, none for
digits. The cache file is written under a lock (``<name>.lock``), so two trainers never
write it at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from landscape.checkpoints import (TEACHER_FORMAT, VERSION, CheckpointError, CheckpointMismatch,
                                   load_teacher_file, remove_orphans, save_atomic, seal, sha256_file,
                                   write_text_atomic)
from landscape.data import Dataset, iterate_batches
from landscape.kernels import REPRODUCIBLE
from landscape.kernels import current as current_kernels
from landscape.locking import exclusive_lock
from landscape.models import build_model, evaluate, model_spec
from landscape.pretrained import load_state_dict_file
from landscape.safe_paths import inside
from landscape.zsq.errors import TrainingError


def teacher_settings(recipe: dict) -> dict:
    """The recipe's [teacher] section as it identifies the teacher: the training settings,
    or, with ``weights``, only the weights file's content (``{"weights_sha256": ...}``), so
    that moving the file changes nothing."""
    cfg = recipe["teacher"]
    if not cfg.get("weights"):
        return {k: v for k, v in cfg.items() if k != "weights"}
    path = Path(cfg["weights"]).expanduser()
    if not path.is_file():
        from landscape.schema import RecipeError

        raise RecipeError(f"[teacher] weights = {cfg['weights']!r} does not exist; point it at a "
                          "saved state_dict (ours or pytorchcv's resnet20_cifar10)")
    return {"weights_sha256": sha256_file(path)}


def teacher_key(recipe: dict) -> str:
    data = {k: v for k, v in recipe["data"].items() if k != "root"}
    ident = {"data": data, "model": recipe["model"], "teacher": teacher_settings(recipe)}
    mode = current_kernels()
    if mode != REPRODUCIBLE:  # a teacher trained on machine-dependent kernels is another file
        ident["kernels"] = mode
    blob = json.dumps(ident, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def teacher_path(recipe: dict, out: Path, seed: int) -> Path:
    return (Path(out) / "teachers" /
            f"{recipe['data']['name']}-{recipe['model']['name']}-{teacher_key(recipe)}-seed{seed}.pt")


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and random horizontal flip (CIFAR-style)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def train_teacher(recipe: dict, data: Dataset, seed: int, device="cpu", progress=True) -> dict:
    """Train the recipe's teacher from scratch; returns the teacher-file dict (not saved)."""
    cfg = recipe["teacher"]
    spec = model_spec(recipe["model"]["name"], data.channels, data.num_classes,
                      recipe["model"]["width"])
    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    sampler = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"], nesterov=True)
    steps_per_epoch = math.ceil(len(data.y_train) / cfg["batch_size"])
    total = cfg["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    use_aug = data.channels == 3 and data.size >= 32
    bar = tqdm(range(cfg["epochs"]), desc=f"teacher {spec['name']} seed{seed}", disable=not progress,
               leave=False)
    for _ in bar:
        model.train()
        for x, y in iterate_batches(data.x_train, data.y_train, cfg["batch_size"], sampler):
            if use_aug:
                x = augment(x, sampler)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            if not torch.isfinite(loss):
                raise TrainingError(f"teacher training diverged (loss {loss.item()}); "
                                    "lower [teacher] lr in the recipe")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return _teacher_file(recipe, data, model, spec, seed, source="trained")


def pretrained_teacher(recipe: dict, data: Dataset, seed: int, device="cpu") -> dict:
    """The teacher-file dict of ``[teacher] weights`` (our layout or pytorchcv's), evaluated."""
    spec = model_spec(recipe["model"]["name"], data.channels, data.num_classes,
                      recipe["model"]["width"])
    model = build_model(spec)
    model.load_state_dict(load_state_dict_file(Path(recipe["teacher"]["weights"]).expanduser(), spec))
    return _teacher_file(recipe, data, model.to(device), spec, seed,
                         source={"weights": str(recipe["teacher"]["weights"]),
                                 **teacher_settings(recipe)})


def _teacher_file(recipe, data, model, spec, seed, source) -> dict:
    acc = evaluate(model.eval(), data.x_test, data.y_test)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return seal({"format": TEACHER_FORMAT, "version": VERSION, "model_spec": spec, "state_dict": state,
                 "test_acc": acc, "data_spec": data.spec(), "teacher_config": dict(recipe["teacher"]),
                 "source": source, "seed": seed, "key": teacher_key(recipe)})


def get_teacher(recipe: dict, data: Dataset, out: Path, seed: int, device="cpu",
                progress=True) -> tuple[Path, dict]:
    """The cached teacher file (trained, or loaded from ``[teacher] weights``, first if
    absent): ``(path, teacher-file dict)``. Written under the cache file's lock. Under
    ``torch.distributed`` rank 0 makes or reads it and hands it to every rank."""
    from landscape.distributed import on_main

    return on_main(_get_teacher, recipe, data, out, seed, device, progress)


def _get_teacher(recipe: dict, data: Dataset, out: Path, seed: int, device="cpu",
                 progress=True) -> tuple[Path, dict]:
    path = teacher_path(recipe, out, seed)
    inside(out, path)  # a planted link <out>/teachers -> elsewhere is refused
    found = _sound_teacher(path, warn=True)
    if found is not None and _same_kernels(path):
        return path, found
    with exclusive_lock(path.with_suffix(".lock"), f"teacher cache {path}"):
        remove_orphans(path.parent, prefix=path.name + ".")
        found = _sound_teacher(path)  # another process may have written it meanwhile
        if found is None or not _same_kernels(path):
            if found is not None:
                warnings.warn(f"{path} was not made in this process's kernel mode ({current_kernels()}; "
                              "landscape.kernels), or before landscape recorded the mode: it is rebuilt, so that "
                              "no run of this mode learns from a teacher of another", stacklevel=3)
            make = (pretrained_teacher(recipe, data, seed, device) if recipe["teacher"]["weights"]
                    else train_teacher(recipe, data, seed, device, progress))
            save_atomic(make, path)
            write_text_atomic(current_kernels(), kernels_record(path))
    return path, load_teacher_file(path)


def kernels_record(path: Path) -> Path:
    """The file beside a cached teacher that says which kernel mode made it (outside the teacher
    file, so that its bytes and hash, which the runs record, stay those of the weights)."""
    return path.with_suffix(".kernels")


def _same_kernels(path: Path) -> bool:
    try:
        return kernels_record(path).read_text(encoding="utf-8").strip() == current_kernels()
    except OSError:
        return False


def _sound_teacher(path: Path, warn: bool = False) -> dict | None:
    """The cached teacher file if it is there and sound; None if absent, or corrupt (truncated,
    a bit flipped: then it is rebuilt like a missing one, which gives the same bytes for the
    same recipe and seed, and said when ``warn``)."""
    if not path.is_file():
        return None
    try:
        return load_teacher_file(path)
    except CheckpointMismatch:  # sound bytes, unusable weights (NaN): retraining gives the same
        raise
    except CheckpointError as exc:
        if warn:
            warnings.warn(f"{exc} (the teacher is rebuilt from the recipe)", stacklevel=4)
        return None
