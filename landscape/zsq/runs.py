"""Train a recipe's runs: the cached teacher first, then each named run, resuming when it can.

    train_recipe("analyses/default.toml")        # -> [Path("checkpoints/default/ptq-seed0"), ...]

Run folder: ``<out>/<recipe name>/<run>-seed<S>/`` (see docs/run-folder.md). For each run:

1. a finished run (config.json unchanged, every checkpoint up to the last epoch present
   and sound: content hash, identity and shapes of each checked) is left alone: nothing is
   written, so a read-only archive works;
2. otherwise the folder's lock is taken (a second writer gets one line naming the
   holder's pid), orphan ``*.tmp`` files are removed, config.json is written if new;
3. training resumes from the last checkpoint of the unbroken run of sound epochs from the
   first, each checked like every read (content hash, run, seed, recipe, epoch, model): a
   deleted or corrupt checkpoint, in the middle too, is warned about and refilled (training
   restarts after the last good epoch and rewrites the later ones identically); a sound
   checkpoint of another run, epoch or model is refused naming the file;
4. the logs are validated and cut back to that epoch (rows of an interrupted epoch go); a
   metrics.csv from before the ``effective_batch`` column gains it (from config.json).

A folder written with a different configuration is an error, never overwritten. A run
killed at any point and resumed gives byte-identical checkpoints (same device and threads).

Under ``torchrun`` (``landscape train RECIPE --nproc N``) every rank calls this with the same
arguments: rank 0 takes the lock, checks and prepares the folder and loads the resume point,
then hands the checkpoint to every rank (:func:`landscape.distributed.on_main`; no shared file
system needed); all ranks train the run together (:mod:`landscape.zsq.parallel`), rank 0
writes. config.json then records ``distributed = {world_size, batch_per_rank,
effective_batch}``, so a folder trained on N ranks resumes only on N ranks. The PTQ run (no
training) is done by rank 0 alone.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable

import torch

from landscape import distributed, kernels
from landscape.checkpoints import (CONFIG_NAME, CheckpointError, CheckpointMismatch,
                                   checkpoint_path, config_hash, list_checkpoints, load_checkpoint,
                                   read_run_config, remove_orphans, sha256_file, write_text_atomic)
from landscape.config import RecipeError, check_overrides, load_recipe, resolve_run, validate_run
from landscape.data import load_dataset
from landscape.errors import DeviceError, LandscapeError, storage_error
from landscape.locking import exclusive_lock
from landscape.safe_paths import inside, safe_name
from landscape.zsq import tables
from landscape.zsq.parallel import DataParallel, batch_record, effective_batch
from landscape.zsq.teacher import get_teacher, teacher_settings
from landscape.zsq.trainer import Run, StepHook

DEFAULT_OUT = Path("checkpoints")
LOCK_NAME = ".lock"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_dir_for(out: str | Path, recipe_name: str, run: str, seed: int) -> Path:
    """``<out>/<recipe>/<run>-seed<S>``; each name must be one safe path component
    (:func:`landscape.safe_paths.safe_name`, checked in the recipe's schema too)."""
    safe_name(recipe_name, "the recipe name")
    safe_name(run, "the run name")
    return Path(out) / recipe_name / f"{run}-seed{seed}"


def _resolved_config(recipe: dict, cfg: dict, seed: int, teacher_ref: dict, spec: dict,
                     threads: int, world_size: int = 1) -> dict:
    config = {"recipe": recipe["name"], "run": cfg["name"], "seed": seed, "threads": threads,
              "kernels": kernels.current(),
              "data": {k: v for k, v in recipe["data"].items() if k != "root"},
              "model": recipe["model"], "model_spec": spec, "quant": recipe["quant"],
              "teacher": teacher_settings(recipe), "teacher_file": teacher_ref, "train": cfg}
    if world_size > 1 and cfg["source"] != "none":  # the effective batch is part of the run
        config["distributed"] = batch_record(world_size, cfg["batch_size"])
    return config


def _differences(old: dict, new: dict, prefix="") -> list[str]:
    """What differs between two configs, ``train.epochs`` aside (it may grow)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b and f"{prefix}{k}" != "train.epochs":
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _check_same_config(run_dir: Path, config: dict) -> dict | None:
    """The folder's config.json (None if absent); RecipeError if it was another config."""
    old = read_run_config(run_dir)
    if old is not None:
        diff = _differences(old, json.loads(json.dumps(config)))
        if diff:
            hint = ("; it was trained in the other kernel mode (--fast / reproducible = false, see "
                    "landscape.kernels): train with the same mode" if any(d.startswith("kernels:") for d in diff) else "")
            raise RecipeError(f"{run_dir} holds a run trained with a different configuration "
                              f"({'; '.join(diff[:5])}){hint}; use another --out or delete the folder")
    return old


def _is_finished(run_dir: Path, config: dict, first: int, target: int) -> bool:
    """Read-only: config.json unchanged, epochs first..target all there and every one of them
    sound (:func:`load_checkpoint`: content hash, identity, shapes; ~20 ms a checkpoint)."""
    if _check_same_config(run_dir, config) is None:
        return False
    present = dict(list_checkpoints(run_dir))
    if not all(e in present for e in range(first, target + 1)):
        return False
    return _sound_prefix(present, first, target)[2] is None  # else the locked path says why


def _sound_prefix(present: dict[int, Path], first: int,
                  target: int) -> tuple[int, dict | None, CheckpointError | None]:
    """Load epochs ``first``, ``first + 1``, ... up to ``target`` while present and sound
    (:func:`load_checkpoint`): ``(last sound epoch, its checkpoint, the error that stopped the
    walk or None)``; ``(first - 1, None, ...)`` when the first is missing or bad."""
    done, last = first - 1, None
    while done + 1 in present and done < target:
        try:
            ckpt = load_checkpoint(present[done + 1])
        except CheckpointError as exc:
            return done, last, exc
        done, last = done + 1, ckpt
    return done, last, None


def _resume_point(run_dir: Path, first: int, target: int) -> tuple[int, dict | None]:
    """(last good epoch, its checkpoint): the end of the unbroken run of sound epochs from
    ``first``; ``(first - 1, None)`` for a fresh start. Every checkpoint of that run is
    checked like every read: a missing or corrupt one ends it (warned about; training resumes
    before it and rewrites the later epochs), a sound one of another run, epoch or model is
    refused (CheckpointMismatch naming the file)."""
    present = dict(list_checkpoints(run_dir))
    done, last, error = _sound_prefix(present, first, target)
    if isinstance(error, CheckpointMismatch):
        raise error
    if error is not None:
        warnings.warn(f"{error} (training resumes after epoch {done} and rewrites the later "
                      "epochs)", stacklevel=4)
        return done, last
    if done < target and any(e > done + 1 for e in present):
        warnings.warn(f"{run_dir}: {checkpoint_path(run_dir, done + 1).name} is missing; training "
                      f"resumes after epoch {done} and rewrites the later epochs", stacklevel=4)
    return done, last


def _prepare_logs(run_dir: Path, first: int, done: int, config: dict) -> None:
    """Validate the logs and keep only the rows of epochs first..done (none on a fresh start);
    a metrics.csv written before ``effective_batch`` was logged gains that column."""
    metrics, crossings = run_dir / "metrics.csv", run_dir / "crossings.csv"
    if done < first:
        for log in (metrics, crossings):
            log.unlink(missing_ok=True)
        return
    logged = tables.truncate_after(metrics, done)["epoch"].tolist()
    tables.truncate_after(crossings, done)
    if logged != list(range(first, done + 1)):
        raise tables.LogError(f"{metrics} holds epochs {logged[:3]}...{logged[-3:]} but the "
                              f"checkpoints run from epoch {first} to {done}: the log was edited "
                              f"or lost; restore it, or delete the run folder {run_dir} and retrain")
    tables.add_effective_batch(metrics, effective_batch(config))


@contextmanager
def _os_errors_name(path: Path):
    """Any stray OSError while writing a run folder becomes one StorageError line."""
    try:
        yield
    except LandscapeError:
        raise
    except OSError as exc:
        raise storage_error(exc, path) from None


def _prepare(run_dir: Path, config: dict, first: int, target: int, lock: ExitStack):
    """Check and prepare a run folder for training; None if the run is finished, else
    ``(done, last)``: the resume point and its checkpoint. Takes the folder's lock into ``lock``."""
    if _is_finished(run_dir, config, first, target):
        return None
    lock.enter_context(exclusive_lock(run_dir / LOCK_NAME, f"run folder {run_dir}"))
    with _os_errors_name(run_dir):
        remove_orphans(run_dir)
        old = _check_same_config(run_dir, config)
        if old != json.loads(json.dumps(config)):
            write_text_atomic(json.dumps(config, indent=2, sort_keys=True), run_dir / CONFIG_NAME)
        done, last = _resume_point(run_dir, first, target)
        if done >= target:
            return None
        _prepare_logs(run_dir, first, done, config)
    return done, last


def _train_one(cfg: dict, config: dict, recipe: dict, data, t_file: dict, teacher_ref: dict,
               run_dir: Path, seed: int, device, threads: int, step_hook, progress,
               ctx: distributed.Context | None = None) -> None:
    ctx = ctx or distributed.Context()
    if ctx.distributed and cfg["source"] == "none":  # nothing to share out: rank 0 does it, as one process
        distributed.on_main(_train_one, cfg, config, recipe, data, t_file, teacher_ref, run_dir, seed,
                            device, threads, step_hook, progress, distributed.Context(), ctx=ctx)
        return
    first, target = (0, 0) if cfg["source"] == "none" else (1, cfg["epochs"])
    with ExitStack() as lock:  # rank 0 holds the run folder's lock until training ends
        prepared = distributed.on_main(_prepare, run_dir, config, first, target, lock, ctx=ctx)
        if prepared is None:
            return
        done, last = prepared
        with _os_errors_name(run_dir):
            run = Run(cfg, recipe, data, t_file, teacher_ref, run_dir, seed, device,
                      recipe_hash=config_hash(config), threads=threads,
                      parallel=DataParallel(ctx) if ctx.distributed else None)
            if cfg["source"] == "none":
                run.post_training_quantization()
                return
            if last is not None:
                run.restore(last)
            run.fit(done + 1, cfg["epochs"], step_hook=step_hook, progress=progress)


def train_recipe(recipe: str | Path | dict, runs: Iterable[str] | None = None,
                 epochs: int | None = None, out: str | Path | None = None,
                 seed: int | None = None, data_root: str | Path | None = None,
                 device: str | None = None, *, threads: int | None = None,
                 step_hook: StepHook | None = None, progress: bool = True) -> list[Path]:
    """Train (or reuse) the teacher, then each run of ``recipe`` for one seed; return the
    run folders.

    ``runs``: names from the recipe's [runs.*] (default: all, in recipe order).
    ``epochs`` overrides every training run's epoch count (a larger value extends finished
    runs). ``seed`` (default: the recipe's ``seed``) and ``threads`` (default: the recipe's
    ``threads``, 1 unless set) go through the recipe's schema like every key; torch uses
    ``threads`` intra-op threads for the whole call (restored afterwards), so the numbers do
    not depend on OMP_NUM_THREADS or the core count. ``step_hook(run, epoch, step)`` is
    called after every iteration (tests use it to interrupt a run).

    Under ``torch.distributed`` (torchrun) every rank calls it with the same arguments and the
    runs are trained data-parallel (see the module docstring); ``device="cuda"`` means each
    rank's own GPU.
    """
    if not isinstance(recipe, dict):
        recipe = load_recipe(recipe)
    runs = None if runs is None else list(runs) if not isinstance(runs, str) else runs
    check_overrides(seed=seed, epochs=epochs, threads=threads, runs=runs, data_root=data_root,
                    data_name=recipe["data"]["name"])
    out = Path(out) if out else DEFAULT_OUT
    seed = recipe.get("seed", 0) if seed is None else seed
    threads = recipe.get("threads", 1) if threads is None else threads
    device = device or default_device()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    ctx = distributed.current()
    if ctx.distributed and str(device) == "cuda":
        device = ctx.device  # cuda:<LOCAL_RANK>
    cfgs = []
    for name in runs or list(recipe["runs"]):
        cfg = resolve_run(recipe, name)
        if epochs is not None:
            cfg["epochs"] = epochs
        validate_run(cfg, f"run {name}" + (f" (with --epochs {epochs})" if epochs is not None else ""))
        inside(out, run_dir_for(out, recipe["name"], name, seed))  # no planted link sends it elsewhere
        cfgs.append(cfg)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data_cfg = recipe["data"]
        data = load_dataset(data_cfg["name"], data_root or data_cfg["root"] or None,
                            data_cfg["test_fraction"], data_cfg["split_seed"])
        t_path, t_file = get_teacher(recipe, data, out, seed, device, progress)
        t_sha = distributed.on_main(sha256_file, t_path)
        run_dirs = []
        for cfg in cfgs:
            run_dir = run_dir_for(out, recipe["name"], cfg["name"], seed)
            teacher_ref = {"path": os.path.relpath(t_path, run_dir), "sha256": t_sha,
                           "test_acc": t_file["test_acc"]}
            config = _resolved_config(recipe, cfg, seed, teacher_ref, t_file["model_spec"], threads,
                                      ctx.world_size)
            _train_one(cfg, config, recipe, data, t_file, teacher_ref, run_dir, seed, device,
                       threads, step_hook, progress, ctx)
            run_dirs.append(run_dir)
    finally:
        torch.set_num_threads(previous_threads)
    return run_dirs
