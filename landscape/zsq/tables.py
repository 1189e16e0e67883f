"""The run folder's two CSV logs: metrics.csv (one row per epoch) and crossings.csv (tidy,
one row per quantized layer and student step); written here, and read back validated.

    metrics.csv   epoch, phase, test_acc, best_acc, teacher_acc, acc_drop, loss_ce, loss_kl,
                  loss_total, loss_g, loss_bns, kappa_mean, crossing_fraction, kappa_capped,
                  lr, rho, seconds, effective_batch
    crossings.csv epoch, step, layer, kappa, crossing_fraction, n_evals, capped

``best_acc`` is the best test accuracy up to and including this epoch (warm-up epochs
included, as the official AIT code reports it). ``effective_batch`` is the number of samples
of one optimizer step, N ranks × ``batch_size`` (the calibration batch of a PTQ run); a
metrics.csv written before this column existed (:data:`LEGACY_METRICS_COLUMNS`) is still read
(the column then reads as NaN) and gains the column, filled from config.json, by
:func:`add_effective_batch` when its run is resumed or extended. ``kappa_capped`` counts the (layer, step)
pairs of the epoch whose κ search stopped at the cap before reaching ρ (``capped`` = 1 in
crossings.csv): expected in the GI warm-up (κ ≤ 128), a warning afterwards. ``step`` counts
iterations from the start of training (warm-up iterations included), so
step = (epoch - 1) * iters_per_epoch + i. ``phase`` is warmup, train or ptq. Rows are
appended after each epoch, before its checkpoint; :func:`truncate_after` drops the rows of
epochs that have no checkpoint (an interrupted epoch) when a run resumes.

:func:`read_metrics` and :func:`read_crossings` are the only readers: junk (not UTF-8, wrong
columns, a malformed row, a non-number, a duplicate epoch or step) is one :class:`LogError`
naming the file.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pandas as pd

from landscape.checkpoints import write_text_atomic
from landscape.errors import LandscapeError, storage_error

METRICS_COLUMNS = ["epoch", "phase", "test_acc", "best_acc", "teacher_acc", "acc_drop", "loss_ce",
                   "loss_kl", "loss_total", "loss_g", "loss_bns", "kappa_mean", "crossing_fraction",
                   "kappa_capped", "lr", "rho", "seconds", "effective_batch"]
#: the columns of a metrics.csv written before ``effective_batch`` was logged: still accepted
LEGACY_METRICS_COLUMNS = METRICS_COLUMNS[:-1]
CROSSING_COLUMNS = ["epoch", "step", "layer", "kappa", "crossing_fraction", "n_evals", "capped"]
PHASES = ("warmup", "train", "ptq")

# per log: (integer columns, float columns that must be present, float columns that may be nan)
_METRICS_TYPES = (["epoch", "kappa_capped", "effective_batch"], ["test_acc", "best_acc", "teacher_acc", "lr", "rho"],
                  ["acc_drop", "loss_ce", "loss_kl", "loss_total", "loss_g", "loss_bns",
                   "kappa_mean", "crossing_fraction", "seconds"])
#: (column, lo, hi, NaN allowed): accuracies are percentages, losses and rates finite
_INF = math.inf
_METRICS_RANGES = ([("test_acc", 0.0, 100.0, False), ("best_acc", 0.0, 100.0, False),
                    ("teacher_acc", 0.0, 100.0, False), ("acc_drop", -100.0, 100.0, True),
                    ("kappa_mean", 0.0, _INF, True), ("crossing_fraction", 0.0, 1.0, True),
                    ("kappa_capped", 0, _INF, False), ("lr", 0.0, _INF, False), ("rho", 0.0, _INF, False),
                    ("seconds", 0.0, _INF, True)]
                   + [(c, -_INF, _INF, True) for c in ("loss_ce", "loss_kl", "loss_total", "loss_g", "loss_bns")])
_CROSSING_TYPES = (["epoch", "step", "n_evals", "capped"], ["kappa", "crossing_fraction"], [])


class LogError(LandscapeError, ValueError):
    """A metrics.csv or crossings.csv that is not what the trainer writes; names the file."""


def metrics_row(epoch, phase, test_acc, best_acc, teacher_acc, means, crossings, lr, rho,
                seconds, *, effective_batch: int) -> dict:
    """One metrics.csv row; ``effective_batch`` = N ranks × per-rank batch of this epoch's steps."""
    nan = math.nan
    n = len(crossings)
    return {"epoch": epoch, "phase": phase, "test_acc": test_acc, "best_acc": best_acc,
            "teacher_acc": teacher_acc, "acc_drop": teacher_acc - test_acc,
            "loss_ce": means.get("loss_ce", nan), "loss_kl": means.get("loss_kl", nan),
            "loss_total": means.get("loss_total", nan), "loss_g": means.get("loss_g", nan),
            "loss_bns": means.get("loss_bns", nan),
            "kappa_mean": sum(r["kappa"] for r in crossings) / n if n else nan,
            "crossing_fraction": sum(r["crossing_fraction"] for r in crossings) / n if n else nan,
            "kappa_capped": sum(int(r["capped"]) for r in crossings),
            "lr": lr, "rho": rho, "seconds": seconds, "effective_batch": int(effective_batch)}


def _header(path: Path) -> list[str] | None:
    """The first CSV line of ``path`` (None when the file is absent or empty)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except FileNotFoundError:
        return None
    return next(csv.reader(io.StringIO(first.decode("utf-8", "replace"))), None)


def append_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Append rows (the header first when the file is new); OSError -> StorageError. A file
    whose header is not ``columns`` (e.g. a legacy metrics.csv not yet upgraded by
    :func:`add_effective_batch`) is a LogError: rows of two layouts never share a file."""
    path = Path(path)
    try:
        header = _header(path)
        new = header is None
        if not new and header != columns:
            raise LogError(f"{path} has the columns {header}, but the rows to append have {columns}; "
                           f"{_fix(path)}")
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            if new:
                writer.writeheader()
            writer.writerows({k: int(v) if isinstance(v, bool) else v for k, v in r.items()}
                             for r in rows)
    except OSError as exc:
        raise storage_error(exc, path) from None


def _fix(path: Path) -> str:
    return (f"restore {path.name} from a copy, or delete the run folder {path.parent} and "
            "retrain it")


def _read_log(path: Path, columns: list[str], types, kind: str,
              legacy: list[str] | None = None) -> pd.DataFrame:
    """Read and check one log (see the module docstring); an absent file is an empty table.
    A file with the ``legacy`` header is read too: the columns it lacks come back as NaN."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return pd.DataFrame(columns=columns)
    except OSError as exc:
        raise LogError(f"{path} cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LogError(f"{path} is not a {kind} (not UTF-8 text: random bytes?); {_fix(path)}") from None
    try:
        header = next(csv.reader(io.StringIO(text)), None)
    except csv.Error as exc:
        raise LogError(f"{path} is not a {kind} (malformed header: {exc}); {_fix(path)}") from None
    missing = [c for c in columns if c not in header] if legacy and header == legacy else []
    if header != columns and not missing:
        raise LogError(f"{path} is not a {kind}: its columns are {header}, expected {columns}; "
                       f"{_fix(path)}")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise LogError(f"{path} is not a {kind} (malformed row: {str(exc).splitlines()[0]}); "
                       f"{_fix(path)}") from None
    ints, needed, optional = types
    for col in ints + needed + optional:
        if col in missing:
            df[col] = math.nan
            continue
        num = pd.to_numeric(df[col].replace({"": "nan"}), errors="coerce")
        bad = num.isna() & ~df[col].str.lower().isin(["nan", ""] if col in optional else [])
        if col in ints:
            bad |= num.notna() & (num != num.round())
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise LogError(f"{path} line {i + 2}: {col} = {df[col].iloc[i]!r} is not "
                           f"{'an integer' if col in ints else 'a number'}; {_fix(path)}")
        df[col] = num.astype("int64") if col in ints else num.astype(float)
    return df[columns]


def read_metrics(path: str | Path) -> pd.DataFrame:
    """metrics.csv, checked: its columns, a number in every numeric field, a known phase, one
    row per epoch in increasing order. An absent file reads as an empty table. A legacy file
    (no ``effective_batch`` column) is accepted; its ``effective_batch`` reads as NaN."""
    path = Path(path)
    df = _read_log(path, METRICS_COLUMNS, _METRICS_TYPES, "metrics.csv log", LEGACY_METRICS_COLUMNS)
    bad_phase = ~df["phase"].isin(PHASES)
    if bad_phase.any():
        i = int(bad_phase.to_numpy().nonzero()[0][0])
        raise LogError(f"{path} line {i + 2}: phase = {df['phase'].iloc[i]!r} is not one of "
                       f"{', '.join(PHASES)}; {_fix(path)}")
    for col, lo, hi, nan_ok in _METRICS_RANGES:
        v = df[col]
        bad = ~((v >= lo) & (v <= hi) & v.abs().lt(_INF)) & ~(v.isna() & nan_ok)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            what = "NaN" if math.isnan(v.iloc[i]) else f"{v.iloc[i]!r}"
            raise LogError(f"{path} line {i + 2}: {col} = {what} is out of range; expected "
                           f"{'a finite number' if math.isinf(hi) else f'a number in [{lo:g}, {hi:g}]'}"
                           f"{' or nan' if nan_ok else ''}; {_fix(path)}")
    eb = df["effective_batch"]
    bad_batch = eb.notna() & (eb < 1)   # a whole number already (the column's type is checked)
    if bad_batch.any():
        i = int(bad_batch.to_numpy().nonzero()[0][0])
        raise LogError(f"{path} line {i + 2}: effective_batch = {eb.iloc[i]:g} is not a number of samples >= 1; "
                       f"{_fix(path)}")
    epochs = df["epoch"].tolist()
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        dup = sorted({e for e in epochs if epochs.count(e) > 1}) or epochs
        raise LogError(f"{path} holds epochs out of order or twice ({dup[:5]}): two writers, or "
                       f"an edit; {_fix(path)}")
    return df


def read_crossings(path: str | Path) -> pd.DataFrame:
    """crossings.csv, checked: its columns, numbers where numbers belong, a layer name, each
    (step, layer) once, steps in order. An absent file reads as an empty table."""
    path = Path(path)
    df = _read_log(path, CROSSING_COLUMNS, _CROSSING_TYPES, "crossings.csv log")
    if (df["layer"] == "").any():
        i = int((df["layer"] == "").to_numpy().nonzero()[0][0])
        raise LogError(f"{path} line {i + 2}: no layer name; {_fix(path)}")
    dup = df.duplicated(["step", "layer"])
    if dup.any() or not df["step"].is_monotonic_increasing:
        i = int(dup.to_numpy().nonzero()[0][0]) if dup.any() else 0
        raise LogError(f"{path} holds steps out of order or twice (near line {i + 2}): two "
                       f"writers, or an edit; {_fix(path)}")
    return df


def truncate_after(path: Path, epoch: int) -> pd.DataFrame:
    """Keep only the rows with epoch <= ``epoch`` (validated first; the kept lines are
    rewritten byte for byte, atomically); returns the rows kept."""
    path = Path(path)
    df = read_metrics(path) if path.name == "metrics.csv" else read_crossings(path)
    keep = df[df["epoch"] <= epoch]
    if len(keep) < len(df):  # epochs are in order (checked), so the kept rows are a prefix
        lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)
        write_text_atomic("".join(lines[:1 + len(keep)]), path)
    return keep


def add_effective_batch(path: str | Path, effective_batch: int) -> bool:
    """Give a legacy metrics.csv (no ``effective_batch`` column) that column, every row set to
    ``effective_batch`` (a run's effective batch never changes: config.json fixes it). The
    existing fields are kept byte for byte; the file is replaced atomically. Returns whether
    the file was rewritten (False for an absent or already current file)."""
    path = Path(path)
    if _header(path) != LEGACY_METRICS_COLUMNS:
        return False
    read_metrics(path)  # validated first: junk is a LogError, never upgraded
    out = []
    for i, line in enumerate(path.read_bytes().decode("utf-8").splitlines(keepends=True)):
        body = line.rstrip("\r\n")
        field = "effective_batch" if i == 0 else str(int(effective_batch))
        out.append(f"{body},{field}{line[len(body):]}" if body else line)
    write_text_atomic("".join(out), path)
    return True
