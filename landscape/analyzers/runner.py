"""Run the analyses over run folders: checkpoints in, tidy CSV tables out, with a cache.

For each run folder and each epoch an analysis needs, the runner rebuilds the student (eval
mode, quantizer state restored), the teacher and that epoch's stored analysis batches, and
hands the analyzer a :class:`~landscape.analyzers._common.Point` with the losses
``{"ce": cross_entropy(), "kl": kl_to_teacher(teacher, T, reduction)}`` (T and the reduction
stored in the checkpoint).

Cache: every result is stored under ``<out_dir>/.cache/<analysis>/<key>.csv``, the key being
a hash of the checkpoint file contents (both files, for the pairwise analyses), the
analyzer's version and the settings that change its numbers. A second call with the same
checkpoints and settings loads no checkpoint and performs no Hessian-vector product;
``force=True`` recomputes (and refreshes the cache).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
from tqdm.auto import tqdm

from landscape.analyzers import cosine, crossings, density, eigen, interepoch, trace
from landscape.analyzers._common import COLUMNS, EXTRA_COLUMNS, AnalysisError, Point, select_epochs
from landscape.analyzers.settings import cache_settings, check_analyses, resolve_settings

MODULES = {m.NAME: m for m in (cosine, trace, eigen, density, interepoch, crossings)}


class AnalysisWarning(UserWarning):
    """A checkpoint or run was skipped; the analysis went on without it."""


def _warn(msg: str) -> None:
    warnings.warn(msg, AnalysisWarning, stacklevel=3)


# ----------------------------------------------------------------------------- tables


def to_table(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows -> a tidy DataFrame with the documented columns first (extras only if used)."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    for c in COLUMNS:
        if c not in df:
            df[c] = math.nan
    df["loss"] = df["loss"].fillna("").astype(str)  # CSV turns "" into NaN; keep it a string
    df["layer"] = df["layer"].fillna("all").astype(str)
    extras = [c for c in EXTRA_COLUMNS if c in df and df[c].notna().any()]
    others = [c for c in df.columns if c not in COLUMNS and c not in EXTRA_COLUMNS]
    return df[COLUMNS + extras + others].reset_index(drop=True)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- cache


class Cache:
    """Results keyed by checkpoint content and settings, as small CSV files."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._hash_index_path = self.root / "hashes.json"
        try:
            self._hashes = json.loads(self._hash_index_path.read_text())
        except (OSError, ValueError):
            self._hashes = {}
        self._dirty = False

    def file_hash(self, path: Path) -> str:
        """sha256 of a file's bytes, memoised on (path, size, mtime)."""
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        hit = self._hashes.get(str(path))
        if hit and hit[:2] == stamp:
            return hit[2]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        self._hashes[str(path)] = stamp + [digest]
        self._dirty = True
        return digest

    @staticmethod
    def key(name: str, version: int, settings: dict, hashes: list[str]) -> str:
        blob = json.dumps({"analysis": name, "version": version, "settings": settings,
                           "checkpoints": hashes}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _path(self, name: str, key: str) -> Path:
        return self.root / name / f"{key}.csv"

    def get(self, name: str, key: str) -> pd.DataFrame | None:
        path = self._path(name, key)
        if not path.exists():
            return None
        try:
            return pd.read_csv(path, keep_default_na=True)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
            return None

    def put(self, name: str, key: str, rows: list[dict]) -> None:
        _write_csv(to_table(rows), self._path(name, key))

    def save_index(self) -> None:
        if self._dirty:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self._hash_index_path.with_name(f"hashes.json.tmp{os.getpid()}")
            tmp.write_text(json.dumps(self._hashes))
            os.replace(tmp, self._hash_index_path)
            self._dirty = False


# ----------------------------------------------------------------------------- runs


_RUN_RE = re.compile(r"^(?P<run>.+)-seed(?P<seed>\d+)$")


def run_identity(run_dir: Path) -> dict:
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


def _list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    from landscape.checkpoints import list_checkpoints

    try:
        return [(int(e), Path(p)) for e, p in list_checkpoints(run_dir)]
    except FileNotFoundError:
        return []


class _Loader:
    """Builds points from checkpoints; the teacher is rebuilt once per (file, hash)."""

    def __init__(self, device, cfg: dict):
        self.device = device
        self.cfg = cfg
        self._teachers: dict = {}

    def _teacher(self, ckpt):
        from landscape.checkpoints import rebuild_teacher

        ref = ckpt.get("teacher") or {}
        key = (str(ref.get("path")), str(ref.get("sha256")))
        if key not in self._teachers:
            teacher = rebuild_teacher(ckpt, device=self.device)
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self._teachers = {key: teacher}  # keep one: runs rarely share teachers mid-call
        return self._teachers[key]

    def load(self, path: Path, meta: dict) -> Point:
        from landscape import losses
        from landscape.checkpoints import analysis_batches, load_checkpoint, rebuild_student

        from landscape.checkpoints import CheckpointError

        ckpt = load_checkpoint(path)
        try:
            student = rebuild_student(ckpt, device=self.device)
        except CheckpointError:
            raise
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # e.g. a state_dict mismatch
            first = str(exc).strip().splitlines()
            raise AnalysisError(f"{path}: cannot rebuild its student ({type(exc).__name__}: "
                                f"{' '.join(first[:2])[:300]}); was it written by another version of "
                                "landscape's models? retrain the run") from None
        student.eval()
        batches = list(analysis_batches(ckpt))
        if self.cfg["max_batches"]:
            batches = batches[: self.cfg["max_batches"]]
        if not batches:
            raise AnalysisError(f"{path}: the checkpoint holds no analysis batches")
        batches = [tuple(t.to(self.device) if hasattr(t, "to") else t for t in b) for b in batches]
        loss_fns = {"ce": losses.cross_entropy()}
        if "kl" in self.cfg["losses"] or self.cfg["interepoch"]["loss"] == "kl":
            loss_fns["kl"] = losses.kl_to_teacher(
                self._teacher(ckpt),
                temperature=float(ckpt.get("temperature") or 1.0),
                reduction=ckpt.get("kl_reduction") or "batchmean",
            )
        return Point(student, loss_fns, batches, meta=dict(meta))


def _expected_epochs(run_dir: Path, avail: list[int]) -> set[int]:
    """Epochs a run folder should hold: 1 (or its first) .. its last, and every metrics.csv epoch."""
    first = min(avail[0], 1)
    expected = set(range(first, avail[-1] + 1))
    try:
        logged = pd.read_csv(run_dir / "metrics.csv", usecols=["epoch"])["epoch"]
        expected |= {int(e) for e in logged.dropna()}
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError):
        pass
    return expected


def _default_device(device):
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _checkpoint_error_types():
    try:
        from landscape.checkpoints import CheckpointError
    except ImportError:  # pragma: no cover
        return (AnalysisError,)
    return (CheckpointError, AnalysisError)


def _restamp(df: pd.DataFrame, meta: dict) -> pd.DataFrame:
    df = df.copy()
    for k in ("run", "seed", "epoch"):
        df[k] = meta[k]
    return df


def _training_rows(run_dir: Path, ident: dict) -> list[dict]:
    """The run's ``metrics.csv`` in long form: run, seed, epoch, metric, value."""
    path = run_dir / "metrics.csv"
    try:
        m = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return []
    if "epoch" not in m:
        return []
    long = m.melt(id_vars=["epoch"], var_name="metric", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    long.insert(0, "seed", ident["seed"])
    long.insert(0, "run", ident["run"])
    return long.to_dict("records")


def analyze_runs(run_dirs, analyses=None, force: bool = False, settings: Mapping | None = None,
                 out_dir="figures/tables", device=None) -> dict[str, pd.DataFrame]:
    """Run the chosen analyses over every checkpoint of each run folder.

    Parameters
    ----------
    run_dirs:  run folders (``checkpoints/<recipe>/<run>-seed<S>/``) or one folder.
    analyses:  names from :data:`landscape.analyzers.ANALYSES`; ``None`` = all.
    force:     recompute even when a cached result exists.
    settings:  a recipe's ``[analysis]`` table (see :mod:`landscape.analyzers.settings`).
    out_dir:   where ``<analysis>.csv`` tables (and the ``.cache`` folder) go.
    device:    ``"cpu"``, ``"cuda"``...; default CUDA when available.

    Returns ``{analysis: DataFrame}`` (tidy; also written as ``<out_dir>/<analysis>.csv``),
    plus ``"training"``: the runs' ``metrics.csv`` in long form (``training.csv``).
    """
    names = check_analyses(analyses)
    cfg = resolve_settings(settings)
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise AnalysisError("no run folder given")
    for r in run_dirs:
        if not r.is_dir():
            raise AnalysisError(f"run folder {str(r)!r} does not exist (train it first: landscape train RECIPE)")
    out_dir = Path(out_dir)
    cache = Cache(out_dir / ".cache")
    device = _default_device(device)
    loader = _Loader(device, cfg)
    ckpt_errors = _checkpoint_error_types()

    tables: dict[str, list] = {n: [] for n in names}
    training: list[dict] = []
    problems: list[str] = []
    analysed_any = False
    idents = [run_identity(r) for r in run_dirs]
    known_runs = {i["run"] for i in idents}
    for n in names:
        for wanted in cfg[n]["runs"] or []:
            if wanted not in known_runs:
                _warn(f"[analysis.{n}] runs names {wanted!r}, which is not among the runs given "
                      f"({', '.join(sorted(known_runs))})")

    for run_dir, ident in zip(run_dirs, idents):
        training += _training_rows(run_dir, ident)
        mine = [n for n in names if cfg[n]["runs"] is None or ident["run"] in cfg[n]["runs"]]
        if not mine:
            continue
        ckpts = _list_checkpoints(run_dir)
        if not ckpts:
            problems.append(f"{run_dir}: no checkpoints")
            _warn(f"run folder {run_dir} holds no checkpoint (epoch_*.pt); skipped")
            continue
        paths = dict(ckpts)
        avail = sorted(paths)
        gaps = sorted(_expected_epochs(run_dir, avail) - set(avail))
        if gaps:
            _warn(f"run {ident['run']} ({run_dir}): no checkpoint for epoch(s) "
                  f"{', '.join(map(str, gaps))}; analysing the epochs that are there")
        hashes = {}
        for e in avail:
            try:
                hashes[e] = cache.file_hash(paths[e])
            except OSError as exc:
                _warn(f"run {ident['run']} epoch {e}: cannot read {paths[e]} ({exc}); skipped")
        avail = [e for e in avail if e in hashes]

        per_point: dict[int, list[str]] = {}
        pairs: dict[int, list[tuple[str, int]]] = {}
        need_state: dict[int, set[str]] = {}
        for n in mine:
            mod = MODULES[n]
            sel = select_epochs(cfg[n]["epochs"], avail, f"[analysis.{n}] epochs")
            csett = cache_settings(cfg, n)
            for e in sel:
                meta = {**ident, "epoch": e}
                if getattr(mod, "PAIRWISE", False):
                    earlier = [p for p in avail if p < e]
                    if not earlier:
                        continue
                    prev = earlier[-1]
                    key = cache.key(n, mod.VERSION, csett, [hashes[prev], hashes[e]])
                else:
                    key = cache.key(n, mod.VERSION, csett, [hashes[e]])
                hit = None if force else cache.get(n, key)
                if hit is not None:
                    tables[n].append(_restamp(hit, meta))
                    analysed_any = True
                    continue
                if getattr(mod, "PAIRWISE", False):
                    pairs.setdefault(e, []).append((n, prev, key))
                    need_state.setdefault(prev, set()).add(n)
                    need_state.setdefault(e, set()).add(n)
                else:
                    per_point.setdefault(e, []).append((n, key))
            if n == "crossings":
                log_rows = crossings.from_log(run_dir, ident, epochs=sel)
                if log_rows:
                    tables[n].append(to_table(log_rows))
                    analysed_any = True

        work = sorted(set(per_point) | set(pairs) | set(need_state))
        states: dict[tuple[str, int], object] = {}
        bad: set[int] = set()
        bar = tqdm(work, desc=f"{ident['run']} seed {ident['seed']}", unit="ckpt", disable=None, leave=False)
        for e in bar:
            meta = {**ident, "epoch": e}
            try:
                point = loader.load(paths[e], meta)
            except ckpt_errors as exc:
                bad.add(e)
                problems.append(str(exc) if str(paths[e]) in str(exc) else f"{paths[e]}: {exc}")
                _warn(f"run {ident['run']} epoch {e}: {exc}; skipped")
                continue
            for n, key in per_point.get(e, []):
                rows = MODULES[n].analyze(point, cfg)
                cache.put(n, key, rows)
                tables[n].append(to_table(rows))
                analysed_any = True
            for n in need_state.get(e, ()):
                states[(n, e)] = MODULES[n].state(point, cfg)
            for n, prev, key in pairs.get(e, []):
                if prev in bad or (n, prev) not in states:
                    _warn(f"run {ident['run']}: {n} of epoch {e} needs epoch {prev}, which could not be "
                          "loaded; skipped")
                    continue
                rows = MODULES[n].compare(states[(n, prev)], states[(n, e)], meta, prev, cfg)
                cache.put(n, key, rows)
                tables[n].append(to_table(rows))
                analysed_any = True
            for key in [k for k in states if k[1] < e]:  # a state is needed by the next epoch at most
                del states[key]
            del point
        bar.close()
        cache.save_index()

    if not analysed_any:
        detail = "; ".join(problems[:5]) if problems else "no checkpoint matched the analyses' runs/epochs"
        raise AnalysisError(f"nothing left to analyse: {detail}")

    out: dict[str, pd.DataFrame] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        parts = [t for t in tables[n] if not t.empty]
        df = to_table(pd.concat(parts, ignore_index=True).to_dict("records")) if parts else to_table([])
        if not df.empty:
            df = df.sort_values(["run", "seed", "epoch", "metric"], kind="stable").reset_index(drop=True)
        _write_csv(df, out_dir / f"{n}.csv")
        out[n] = df
    train_df = pd.DataFrame(training, columns=["run", "seed", "epoch", "metric", "value"])
    _write_csv(train_df, out_dir / "training.csv")
    out["training"] = train_df
    return out
