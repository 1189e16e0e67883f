"""Self-describing checkpoints: what the trainer writes and the analyzers read.

A run folder ``<out>/<recipe>/<run>-seed<S>/`` holds ``config.json``, ``epoch_0001.pt`` ...
(one per completed epoch; a PTQ run writes ``epoch_0000.pt``), ``metrics.csv`` and
``crossings.csv``. A checkpoint is a ``torch.save`` dict of tensors and plain data only, so
it loads with ``torch.load(weights_only=True)`` (no code runs):

    format="landscape-checkpoint", version, run, recipe, seed, epoch, phase, config,
    model_spec, quant={w_bits, a_bits, act_momentum}, data_spec,
    student_state, generator_spec, generator_state, optimizer_state, generator_optimizer_state,
    rng_state, teacher={path, sha256, test_acc}, analysis_batches=[(x, y), ...],
    temperature, kl_reduction, metrics (this epoch's metrics.csv row)

Teachers are cached apart (format "landscape-teacher") and referenced by path (relative to
the run folder) and sha256, checked when the teacher is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.models import build_model

FORMAT = "landscape-checkpoint"
TEACHER_FORMAT = "landscape-teacher"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
EPOCH_RE = re.compile(r"^epoch_(\d{4,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


# ----------------------------------------------------------------------------- writing

def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a reader
    sees either the old file or the complete new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / f"epoch_{epoch:04d}.pt"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading

def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(epoch, path)]`` of the run folder's checkpoints, sorted by epoch (temp files ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; train it with "
                              "`landscape train RECIPE` (runs go to checkpoints/<recipe>/<run>-seed<S>/)")
    found = []
    for p in run_dir.iterdir():
        m = EPOCH_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _torch_load(path: Path, kind: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{kind} {path} is missing; re-run `landscape train` for its "
                              "recipe to recreate it")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a landscape {kind} (a foreign file: not a torch zip "
                              "archive); point at a file written by `landscape train`")
    if size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(f"{kind} {path} is truncated ({size} bytes, incomplete archive); "
                              "delete it and re-run `landscape train`, which resumes from the "
                              "last complete epoch")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a landscape {kind} (it holds objects other than "
                              f"tensors and plain data: {str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{kind} {path} is truncated or corrupt ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it and re-run "
                              "`landscape train`, which resumes from the last complete epoch") from None


def _check_format(obj: Any, path: Path, fmt: str, kind: str) -> dict:
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a landscape {kind} (format {obj.get('format') if isinstance(obj, dict) else None!r}, "
                              f"found {keys}); point at a file written by `landscape train`")
    version = obj.get("version")
    if version not in SUPPORTED_VERSIONS:
        newer = isinstance(version, int) and version > VERSION
        fix = ("upgrade landscape" if newer else
               "re-run `landscape train` with this version to rewrite it")
        raise CheckpointError(f"{path} has {kind} version {version!r}; this landscape reads "
                              f"version {', '.join(map(str, SUPPORTED_VERSIONS))}: {fix}")
    return obj


def load_checkpoint(path: str | Path) -> dict:
    """Load and check one epoch checkpoint (CheckpointError: missing, truncated, foreign, version).

    The returned dict also carries ``_path`` (the file it came from), used to resolve the
    teacher reference.
    """
    path = Path(path)
    ckpt = _check_format(_torch_load(path, "checkpoint"), path, FORMAT, "checkpoint")
    ckpt["_path"] = str(path)
    return ckpt


def load_teacher_file(path: str | Path) -> dict:
    path = Path(path)
    return _check_format(_torch_load(path, "teacher checkpoint"), path, TEACHER_FORMAT,
                         "teacher checkpoint")


# ----------------------------------------------------------------------------- rebuilding

def rebuild_student(ckpt: dict, device: str | torch.device = "cpu") -> nn.Module:
    """The quantized student of a checkpoint: weights and activation ranges restored, eval mode."""
    from landscape.quant import quantize_model

    q = ckpt["quant"]
    student = quantize_model(build_model(ckpt["model_spec"]), q["w_bits"], q["a_bits"],
                             q.get("act_momentum", 0.9))
    try:
        student.load_state_dict(ckpt["student_state"])
    except RuntimeError as exc:  # the saved weights do not fit the model this code builds
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{ckpt.get('_path', 'the checkpoint')}: its student weights do not fit "
                              f"the {ckpt['model_spec']} model built by this version ({first}); "
                              "retrain the run with this version of landscape") from None
    return student.to(device).eval()


def teacher_file(ckpt: dict) -> Path:
    ref = Path(ckpt["teacher"]["path"])
    if ref.is_absolute():
        return ref
    base = Path(ckpt.get("_path", ".")).parent
    return (base / ref).resolve()


def rebuild_teacher(ckpt: dict, device: str | torch.device = "cpu") -> nn.Module:
    """The full-precision teacher referenced by a checkpoint, its sha256 checked, eval mode."""
    path = teacher_file(ckpt)
    if not path.is_file():
        raise CheckpointError(f"teacher {path} (referenced by {ckpt.get('_path', 'the checkpoint')}) "
                              "is missing; re-run `landscape train` for the recipe to retrain it")
    digest = sha256_file(path)
    if digest != ckpt["teacher"]["sha256"]:
        raise CheckpointError(f"teacher {path} has sha256 {digest[:12]}..., but "
                              f"{ckpt.get('_path', 'the checkpoint')} was trained against "
                              f"{ckpt['teacher']['sha256'][:12]}...: the teacher was replaced; "
                              "retrain the run or restore the original teacher file")
    return teacher_from_file(load_teacher_file(path), device)


def teacher_from_file(tckpt: dict, device="cpu") -> nn.Module:
    model = build_model(tckpt["model_spec"])
    model.load_state_dict(tckpt["state_dict"])
    return model.to(device).eval()


def analysis_batches(ckpt: dict, device: str | torch.device | None = None) -> list[tuple]:
    """That epoch's fixed analysis batches ``[(x, y), ...]`` (on ``device`` if given)."""
    batches = [(x, y) for x, y in ckpt["analysis_batches"]]
    if device is not None:
        batches = [(x.to(device), y.to(device)) for x, y in batches]
    return batches


def rebuild_generator(ckpt: dict, device="cpu") -> nn.Module | None:
    """The checkpoint's generator (train mode, as it is used), or None for runs without one."""
    if not ckpt.get("generator_spec"):
        return None
    from landscape.zsq.generator import Generator

    gen = Generator(**ckpt["generator_spec"])
    gen.load_state_dict(ckpt["generator_state"])
    return gen.to(device)
