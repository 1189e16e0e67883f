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

from landscape.analyzers._common import AnalysisError

__all__ = ["run_identity", "checkpoints_of", "expected_epochs", "read_log", "training_rows"]

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
    """Epochs a run folder should hold: 1 (or its first) .. its last, and every metrics.csv epoch."""
    first = min(avail[0], 1)
    expected = set(range(first, avail[-1] + 1))
    try:
        logged = read_log(run_dir / "metrics.csv", ["epoch"])
    except AnalysisError:
        return expected
    if logged is not None:
        expected |= {int(e) for e in logged["epoch"].dropna()}
    return expected


def read_log(path: Path, need: list[str]) -> pd.DataFrame | None:
    """A run folder's CSV log, or None if absent; junk is an :class:`AnalysisError` naming the file."""
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise AnalysisError(f"{path} is not a readable log ({type(exc).__name__}); it was damaged or "
                            "replaced: delete the run folder's logs and checkpoints and retrain") from None
    missing = [c for c in need if c not in df]
    if missing:
        raise AnalysisError(f"{path} lacks the column(s) {missing}; it is not a landscape log")
    return df


def training_rows(run_dir: Path, ident: dict) -> list[dict]:
    """The run's ``metrics.csv`` in long form: run, seed, epoch, metric, value."""
    m = read_log(Path(run_dir) / "metrics.csv", ["epoch"])
    if m is None or m.empty:
        return []
    long = m.melt(id_vars=["epoch"], var_name="metric", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    long.insert(0, "seed", ident["seed"])
    long.insert(0, "run", ident["run"])
    return long.to_dict("records")
