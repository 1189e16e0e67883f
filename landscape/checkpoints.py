"""Self-describing checkpoints: what the trainer writes and the analyzers read.

A run folder ``<out>/<recipe>/<run>-seed<S>/`` holds ``config.json``, ``epoch_0001.pt`` ...
(one per completed epoch; a PTQ run writes ``epoch_0000.pt``), ``metrics.csv``,
``crossings.csv`` and ``.lock`` (see docs/run-folder.md). A checkpoint is a ``torch.save``
dict of tensors and plain data only, so it loads with ``torch.load(weights_only=True)``
(no code runs):

    format="landscape-checkpoint", version, run, recipe, recipe_hash, seed, epoch, phase,
    config, threads, model_spec, quant={w_bits, a_bits, act_momentum, weight_zero_point[, weight, act]},
    data_spec, student_state, generator_spec, generator_state, optimizer_state,
    generator_optimizer_state, rng_state, teacher={path, sha256, test_acc},
    analysis_batches=[(x, y), ...], temperature, kl_reduction,
    metrics (this epoch's metrics.csv row without the wall-clock ``seconds``),
    epoch_grad={names, mean, n_steps} or None, content_hash

Every read checks, before anything is computed (:func:`load_checkpoint`):

- integrity: ``content_hash`` is the sha256 of the tensors and plain data (:func:`content_hash`);
- identity: the epoch in the file name, the run and seed in the folder name, and the run,
  seed, recipe, recipe hash and model spec of the folder's ``config.json``;
- shape: the student's weights fit the model its spec builds.

Files are written canonically (:func:`save_atomic`): the same content gives the same bytes,
so a resumed run's checkpoint is byte-identical to the uninterrupted one. Teachers are
cached apart (format "landscape-teacher", also sealed with a content hash) and referenced by
path (relative to the run folder) and sha256, checked when the teacher is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.errors import LandscapeError, StorageError, storage_error
from landscape.models import build_model

FORMAT = "landscape-checkpoint"
TEACHER_FORMAT = "landscape-teacher"
VERSION = 2
SUPPORTED_VERSIONS = (2,)
EPOCH_RE = re.compile(r"^epoch_(\d{4,})\.pt$")
RUN_DIR_RE = re.compile(r"^(?P<run>.+)-seed(?P<seed>\d+)$")
CONFIG_NAME = "config.json"
#: keys that are not content: where the dict was read from, and the hash itself
_NOT_CONTENT = ("content_hash", "_path")


class CheckpointError(LandscapeError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class CheckpointMismatch(CheckpointError):
    """A sound checkpoint that does not belong where it sits (another run, epoch or model)."""


# ----------------------------------------------------------------------------- content

def canonical(obj: Any) -> Any:
    """A fresh copy of ``obj`` whose pickle depends only on its values.

    Pickle shares repeated objects (memo), so two equal dicts whose strings or tensors happen
    to be shared differently pickle to different bytes. Here every container and tensor is
    new (tensors cloned, contiguous, detached) and every string interned, so equal content
    gives equal bytes.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone(memory_format=torch.contiguous_format)
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(canonical(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(str(obj))
    return obj


def _feed(h, x: Any) -> None:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(x.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(x, dict):
        h.update(f"D{len(x)}:".encode())
        for k, v in x.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(x, (list, tuple)):
        h.update(f"{'L' if isinstance(x, list) else 'U'}{len(x)}:".encode())
        for v in x:
            _feed(h, v)
    elif isinstance(x, str):
        b = x.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)}:".encode() + b)
    elif isinstance(x, bytes):
        h.update(f"Y{len(x)}:".encode() + x)
    elif x is None or isinstance(x, (bool, int, float)):
        h.update(f"{type(x).__name__[0]}{x!r};".encode())
    else:
        raise TypeError(f"content_hash: {type(x).__name__} is neither a tensor nor plain data")


def content_hash(ckpt: dict) -> str:
    """sha256 (hex) of a checkpoint's tensors and plain data, in order.

    Tensors contribute dtype, shape and bytes; dicts their keys and values in order; floats
    their repr. ``content_hash`` itself and ``_path`` are left out, so the value is the same
    before saving and after loading. Wall-clock times are never stored in a checkpoint.
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k not in _NOT_CONTENT})
    return h.hexdigest()


def seal(ckpt: dict) -> dict:
    """``ckpt`` with its ``content_hash`` set (in place; returned for chaining)."""
    ckpt.pop("content_hash", None)
    ckpt["content_hash"] = content_hash(ckpt)
    return ckpt


# ----------------------------------------------------------------------------- writing

def _write_bytes_atomic(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Save ``obj`` canonically (same content, same bytes) through a temporary file in the
    same folder, fsync, then os.replace: a reader sees either the old file or the complete
    new one, never a partial write. An OSError (read-only folder, disk full) becomes one
    :class:`~landscape.errors.StorageError` naming the path and the fix, with no
    temporary file left behind."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(canonical(obj), buf)
    try:
        return _write_bytes_atomic(buf.getvalue(), path)
    except OSError as exc:
        raise storage_error(exc, path) from None


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Text (config.json, a CSV log) written like :func:`save_atomic`."""
    path = Path(path)
    try:
        return _write_bytes_atomic(text.encode("utf-8"), path)
    except OSError as exc:
        raise storage_error(exc, path) from None


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / f"epoch_{epoch:04d}.pt"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_orphans(folder: str | Path, prefix: str = "") -> list[Path]:
    """Delete the ``*.tmp`` files a kill inside a save left in ``folder`` (only those whose
    name starts with ``prefix``); call it while holding the folder's lock."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f"{prefix}*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, p) from None
    return removed


# ----------------------------------------------------------------------------- run config

def config_hash(config: dict) -> str:
    """sha256 (hex) of a run's resolved config (config.json) without ``train.epochs``,
    which may grow when a finished run is extended. Stored in every checkpoint as
    ``recipe_hash``."""
    plain = json.loads(json.dumps(config))
    if isinstance(plain.get("train"), dict):
        plain["train"].pop("epochs", None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def read_run_config(run_dir: str | Path) -> dict | None:
    """The folder's config.json as a dict, None when there is none; junk is a CheckpointError."""
    path = Path(run_dir) / CONFIG_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    try:
        config = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a landscape run config (not JSON: {exc}); restore it "
                              "or delete the run folder and retrain") from None
    if not isinstance(config, dict) or not {"run", "seed", "recipe"} <= set(config):
        raise CheckpointError(f"{path} is not a landscape run config (no run/seed/recipe); "
                              "restore it or delete the run folder and retrain")
    return config


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
            if p.name != checkpoint_path(run_dir, int(m.group(1))).name:  # e.g. epoch_00002.pt
                warnings.warn(f"{p} is not a name landscape writes (epoch {int(m.group(1))} is "
                              f"{checkpoint_path(run_dir, int(m.group(1))).name}); ignored: rename or "
                              "delete it", UserWarning, stacklevel=2)
                continue
            found.append((int(m.group(1)), p))
    return sorted(found)


def _is_zip(path: Path) -> bool:
    """``zipfile.is_zipfile``, which raises (BadZipFile: "span multiple disks") on some junk."""
    try:
        return zipfile.is_zipfile(path)
    except Exception:  # noqa: BLE001 - any failure to read the directory means "not a sound zip"
        return False


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
    if size == 0 or not _is_zip(path):
        raise CheckpointError(f"{kind} {path} is truncated ({size} bytes, incomplete archive); "
                              "delete it and re-run `landscape train`, which resumes from the "
                              "last complete epoch")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a landscape {kind} (it holds objects other than "
                              f"tensors and plain data: {str(exc).splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - corrupt bytes make torch's unpickler raise anything
        # (IndexError, TypeError, AttributeError, MemoryError, ...): each means "corrupt file"
        raise CheckpointError(f"{kind} {path} is truncated or corrupt ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it and re-run "
                              "`landscape train`, which resumes from the last complete epoch") from None


def _check_format(obj: Any, path: Path, fmt: str, kind: str) -> dict:
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        keys = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a landscape {kind} (format {obj.get('format') if isinstance(obj, dict) else None!r}, "
                              f"found {keys}); point at a file written by `landscape train`")
    version = obj.get("version")
    if version not in SUPPORTED_VERSIONS:
        newer = isinstance(version, int) and version > VERSION
        fix = ("upgrade landscape" if newer else
               "delete it (or its run folder) and re-run `landscape train` with this version to rewrite it")
        raise CheckpointError(f"{path} has {kind} version {version!r}; this landscape reads "
                              f"version {', '.join(map(str, SUPPORTED_VERSIONS))}: {fix}")
    stored = obj.get("content_hash")
    try:
        actual = content_hash(obj)
    except TypeError as exc:
        raise CheckpointError(f"{path} is not a landscape {kind} ({exc})") from None
    if stored != actual:
        raise CheckpointError(f"{kind} {path} is corrupt: its content hash is {actual[:12]}..., "
                              f"the hash stored when it was written is {str(stored)[:12]}... "
                              "(bytes changed on disk or in a copy); delete it and re-run "
                              "`landscape train`, which retrains that epoch")
    return obj


def _who(d: dict) -> str:
    return (f"run {d.get('run')!r}, seed {d.get('seed')!r}, recipe {d.get('recipe')!r} "
            f"(hash {str(d.get('recipe_hash'))[:8]}), model {d.get('model_spec')}")


def _check_identity(ckpt: dict, path: Path) -> None:
    """The epoch in the file name, the folder name and the folder's config.json agree with
    what the checkpoint says it is (CheckpointMismatch naming both sides). A checkpoint whose
    identity fields are not even of the right types (a corrupt file read without its content
    hash checked, as :func:`check_placement` does) is a CheckpointError."""
    if not isinstance(ckpt, dict) or not all(
            isinstance(ckpt.get(k), t) for k, t in (("epoch", int), ("run", str), ("seed", int))):
        raise CheckpointError(f"checkpoint {path} is corrupt (its epoch, run or seed is not readable); "
                              "delete it and re-run `landscape train`, which retrains that epoch")
    try:
        _check_identity_fields(ckpt, path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - junk fields (a corrupt file) compare in odd ways
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(exc).__name__} reading its identity); "
                              "delete it and re-run `landscape train`, which retrains that epoch") from None


def _check_identity_fields(ckpt: dict, path: Path) -> None:
    fix = ("it was copied or renamed from elsewhere: move it back, or delete it and re-run "
           "`landscape train`, which retrains a missing epoch")
    m = EPOCH_RE.match(path.name)
    if m and int(m.group(1)) != ckpt.get("epoch"):
        raise CheckpointMismatch(f"{path} holds epoch {ckpt.get('epoch')!r} of run "
                                 f"{ckpt.get('run')!r} seed {ckpt.get('seed')!r}, but its file name "
                                 f"says epoch {int(m.group(1))}; {fix}")
    folder = path.parent
    d = RUN_DIR_RE.match(folder.name)
    if d and (d.group("run") != ckpt.get("run") or int(d.group("seed")) != ckpt.get("seed")):
        raise CheckpointMismatch(f"{path} is a checkpoint of run {ckpt.get('run')!r} seed "
                                 f"{ckpt.get('seed')!r}, but it sits in the folder of run "
                                 f"{d.group('run')!r} seed {d.group('seed')}; {fix}")
    config = read_run_config(folder)
    if config is None:
        return
    outside = {"run": config.get("run"), "seed": config.get("seed"), "recipe": config.get("recipe"),
               "recipe_hash": config_hash(config), "model_spec": config.get("model_spec")}
    inside = {k: ckpt.get(k) for k in outside}
    if inside != outside:
        raise CheckpointMismatch(f"{path} does not belong to {folder}: the checkpoint says "
                                 f"{_who(inside)}; the folder's {CONFIG_NAME} says {_who(outside)}; {fix}")


def _check_shapes(ckpt: dict, path: Path) -> None:
    """The saved student fits the model its spec builds (checked on the meta device: free)."""
    spec = ckpt.get("model_spec")
    try:
        with torch.device("meta"):
            reference = build_model(spec).state_dict()
    except Exception as exc:  # noqa: BLE001 - any failure means "not a model this code builds"
        raise CheckpointMismatch(f"{path}: model spec {spec!r} is not one this landscape builds "
                                 f"({exc}); retrain the run with this version") from None
    state = ckpt.get("student_state") or {}
    if not isinstance(state, dict):
        raise CheckpointMismatch(f"{path}: its student_state is {type(state).__name__}, not a state_dict; "
                                 "retrain the run")
    for key, ref in reference.items():
        if key not in state or not isinstance(state[key], torch.Tensor) or \
                tuple(state[key].shape) != tuple(ref.shape):
            found = tuple(state[key].shape) if isinstance(state.get(key), torch.Tensor) else "nothing"
            raise CheckpointMismatch(f"{path}: the student's {key} has shape {found}, but the "
                                     f"model of its spec {spec} has {tuple(ref.shape)}; the "
                                     "weights do not fit this model: retrain the run")


def load_checkpoint(path: str | Path) -> dict:
    """Load one epoch checkpoint and check it before anything is computed.

    CheckpointError: missing, truncated, foreign, wrong version, content hash mismatch.
    CheckpointMismatch (a CheckpointError): epoch, run, seed, recipe (hash) or model spec
    differ from the file name, the folder name or the folder's config.json, or the student's
    weights do not fit its model. The returned dict also carries ``_path`` (the file it came
    from), used to resolve the teacher reference.
    """
    path = Path(path)
    ckpt = _check_format(_torch_load(path, "checkpoint"), path, FORMAT, "checkpoint")
    _check_identity(ckpt, path)
    _check_shapes(ckpt, path)
    ckpt["_path"] = str(path)
    return ckpt


def check_placement(path: str | Path) -> dict:
    """The identity checks of :func:`load_checkpoint` alone (epoch, run, seed, recipe hash and
    model spec against the file name, folder name and config.json), reading only the
    checkpoint's small pickle (tensors memory-mapped, never read): for callers that skip the
    full load, e.g. a cache hit keyed by the file's sha256. Raises CheckpointMismatch (or
    CheckpointError for a file that is not a checkpoint). Returns the checkpoint dict (plain
    data such as its ``metrics`` row read, tensors memory-mapped)."""
    path = Path(path)
    if not path.is_file() or not _is_zip(path):
        _torch_load(path, "checkpoint")  # raises the usual message
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - say it the way a full load says it
        ckpt = _torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        _check_format(ckpt, path, FORMAT, "checkpoint")
    _check_identity(ckpt, path)
    return ckpt  # its plain data is read; its tensors are memory-mapped, their content hash unchecked


def load_teacher_file(path: str | Path) -> dict:
    """Load a cached teacher (format, version and content hash checked, weights finite)."""
    path = Path(path)
    tfile = _check_format(_torch_load(path, "teacher checkpoint"), path, TEACHER_FORMAT, "teacher checkpoint")
    state = tfile.get("state_dict")
    bad = [k for k, v in (state.items() if isinstance(state, dict) else ())
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointMismatch(f"teacher {path} has NaN or inf weights ({bad[0]}): no student can learn from "
                                 "it; delete it to retrain the teacher (with a lower [teacher] lr), or fix the "
                                 "file given as [teacher] weights")
    return tfile


# ----------------------------------------------------------------------------- rebuilding

def rebuild_student(ckpt: dict, device: str | torch.device = "cpu") -> nn.Module:
    """The quantized student of a checkpoint: weights and activation ranges restored, eval mode."""
    from landscape.quant import quantize_model

    q = ckpt["quant"]
    student = quantize_model(build_model(ckpt["model_spec"]), q["w_bits"], q["a_bits"],
                             q["act_momentum"], weight=q.get("weight", "uniform"), act=q.get("act", "uniform"),
                             weight_zero_point=q["weight_zero_point"])
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


__all__ = ["FORMAT", "TEACHER_FORMAT", "VERSION", "CheckpointError", "CheckpointMismatch",
           "StorageError", "canonical", "content_hash", "seal", "save_atomic", "write_text_atomic",
           "checkpoint_path", "sha256_file", "remove_orphans", "config_hash", "read_run_config",
           "list_checkpoints", "load_checkpoint", "check_placement", "load_teacher_file", "rebuild_student",
           "teacher_file", "rebuild_teacher", "teacher_from_file", "analysis_batches"]
