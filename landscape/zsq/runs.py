"""Train a recipe's runs: the cached teacher first, then each named run, resuming when it can.

    train_recipe("analyses/default.toml")        # -> [Path("checkpoints/default/ptq-seed0"), ...]

Run folder: ``<out>/<recipe name>/<run>-seed<S>/`` (see :mod:`landscape.checkpoints`).
A run whose folder exists continues from its last complete checkpoint (a run killed
mid-epoch redoes that epoch, with the same result as if never stopped); a complete run is
skipped; a folder written with a different configuration is an error, never overwritten.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch

from landscape.checkpoints import CheckpointError, list_checkpoints, load_checkpoint, sha256_file
from landscape.config import RecipeError, validate_run, load_recipe, resolve_run
from landscape.data import load_dataset
from landscape.zsq import tables
from landscape.zsq.teacher import get_teacher
from landscape.zsq.trainer import Run, StepHook

DEFAULT_OUT = Path("checkpoints")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_dir_for(out: str | Path, recipe_name: str, run: str, seed: int) -> Path:
    return Path(out) / recipe_name / f"{run}-seed{seed}"


def _resolved_config(recipe: dict, cfg: dict, seed: int, teacher_ref: dict) -> dict:
    return {"recipe": recipe["name"], "run": cfg["name"], "seed": seed,
            "data": {k: v for k, v in recipe["data"].items() if k != "root"},
            "model": recipe["model"], "quant": recipe["quant"], "teacher": recipe["teacher"],
            "teacher_file": teacher_ref, "train": cfg}


def _differences(old: dict, new: dict, prefix="") -> list[str]:
    keys = set(old) | set(new)
    out = []
    for k in sorted(keys):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b and k != "epochs":
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _last_checkpoint(run_dir: Path):
    """The newest checkpoint that loads, or None; unreadable newer ones are warned about."""
    for epoch, path in reversed(list_checkpoints(run_dir)):
        try:
            return epoch, load_checkpoint(path)
        except CheckpointError as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=3)
    return None


def _prepare_run_dir(run_dir: Path, config: dict) -> None:
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        diff = _differences(old, config)
        if diff:
            raise RecipeError(f"{run_dir} holds a run trained with a different configuration "
                              f"({'; '.join(diff[:5])}); use another --out or delete the folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, cfg_path)


def train_recipe(recipe: str | Path | dict, runs: Iterable[str] | None = None,
                 epochs: int | None = None, out: str | Path | None = None,
                 seed: int | None = None, data_root: str | Path | None = None,
                 device: str | None = None, *, step_hook: StepHook | None = None,
                 progress: bool = True) -> list[Path]:
    """Train (or reuse) the teacher, then each run of ``recipe``; return the run folders.

    ``runs``: names from the recipe's [runs.*] (default: all, in recipe order).
    ``epochs`` overrides every training run's epoch count (a larger value extends finished
    runs). ``step_hook(run, epoch, step)`` is called after every iteration (tests use it to
    interrupt a run).
    """
    if not isinstance(recipe, dict):
        recipe = load_recipe(recipe)
    out = Path(out) if out else DEFAULT_OUT
    seed = recipe.get("seed", 0) if seed is None else int(seed)
    device = device or default_device()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    names = list(runs) if runs else list(recipe["runs"])
    cfgs = []
    for name in names:
        cfg = resolve_run(recipe, name)
        if epochs is not None:
            cfg["epochs"] = int(epochs)
        validate_run(cfg, f"run {name} (with --epochs {epochs})")
        cfgs.append(cfg)

    data_cfg = recipe["data"]
    data = load_dataset(data_cfg["name"], data_root or data_cfg["root"] or None,
                        data_cfg["test_fraction"], data_cfg["split_seed"])
    t_path, t_file = get_teacher(recipe, data, out, seed, device, progress)
    t_sha = sha256_file(t_path)

    run_dirs = []
    for cfg in cfgs:
        run_dir = run_dir_for(out, recipe["name"], cfg["name"], seed)
        teacher_ref = {"path": os.path.relpath(t_path, run_dir), "sha256": t_sha,
                       "test_acc": t_file["test_acc"]}
        _prepare_run_dir(run_dir, _resolved_config(recipe, cfg, seed, teacher_ref))
        run_dirs.append(run_dir)
        last = _last_checkpoint(run_dir)
        target = 0 if cfg["source"] == "none" else cfg["epochs"]
        if last is not None and last[0] >= target:
            continue  # complete
        done = last[0] if last is not None else 0
        for log in (run_dir / "metrics.csv", run_dir / "crossings.csv"):
            if last is None:
                log.unlink(missing_ok=True)
            else:  # drop the rows of an epoch that was interrupted before its checkpoint
                tables.truncate_after(log, done)
        run = Run(cfg, recipe, data, t_file, teacher_ref, run_dir, seed, device)
        if cfg["source"] == "none":
            run.post_training_quantization()
            continue
        if last is not None:
            run.restore(last[1])
        run.fit(done + 1, cfg["epochs"], step_hook=step_hook, progress=progress)
    return run_dirs
