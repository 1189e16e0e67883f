"""What a run folder holds: its identity, its checkpoints, the epochs it should have, its logs.

A run folder is ``<out>/<recipe>/<run>-seed<S>/`` (see ``docs/run-folder.md``). Nothing here
loads a checkpoint: listing and identity come from file names and ``config.json``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd


__all__ = ["run_identity", "checkpoints_of", "expected_epochs", "training_rows"]

_RUN_RE = re.compile(r"^(?P<run>.+)-seed(?P<seed>\d+)$")


def run_identity(run_dir: Path | str) -> dict:
    """``{"run", "seed"}`` of a run folder: from its config.json, else its name ``<run>-seed<S>``."""
    run_dir = Path(run_dir)
    run, seed = None, None
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    if isinstance(cfg, dict):
        run = cfg.get("run") or cfg.get("name")
        if isinstance(run, dict):
            run = run.get("name")
        seed = cfg.get("seed")
    m = _RUN_RE.match(run_dir.name)
    if run is None:
        run = m.group("run") if m else run_dir.name
    if seed is None and m:
        seed = int(m.group("seed"))
    return {"run": str(run), "seed": int(seed) if seed is not None else math.nan}


def checkpoints_of(run_dir: Path) -> list[tuple[int, Path]]:
    """``[(epoch, path)]`` of a run folder's checkpoints, sorted (no checkpoint is loaded)."""
    from landscape.checkpoints import list_checkpoints

    try:
        return [(int(e), Path(p)) for e, p in list_checkpoints(run_dir)]
    except FileNotFoundError:
        return []


def expected_epochs(run_dir: Path, avail: list[int]) -> set[int]:
    """Epochs a run folder should hold: 1 (or its first) .. its last, and every metrics.csv epoch
    (a damaged log adds nothing here: :func:`training_rows` reports it)."""
    from landscape.errors import LandscapeError
    from landscape.zsq.tables import read_metrics

    first = min(avail[0], 1)
    expected = set(range(first, avail[-1] + 1))
    try:
        expected |= {int(e) for e in read_metrics(Path(run_dir) / "metrics.csv")["epoch"]}
    except LandscapeError:
        pass
    return expected


def training_rows(run_dir: Path, ident: dict) -> list[dict]:
    """The run's ``metrics.csv`` in long form: run, seed, epoch, metric, value, checked against the
    sealed checkpoints (:func:`landscape.sealed_logs.sealed_metrics`; a damaged or disagreeing
    log is a :class:`~landscape.zsq.tables.LogError` naming the file)."""
    from landscape.sealed_logs import sealed_metrics

    m = sealed_metrics(run_dir)  # checked against the sealed checkpoints, rebuilt from them if lost
    if m.empty:
        return []
    long = m.drop(columns=[c for c in ("phase",) if c in m]).melt(id_vars=["epoch"], var_name="metric",
                                                                   value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    long.insert(0, "seed", ident["seed"])
    long.insert(0, "run", ident["run"])
    return long.to_dict("records")
