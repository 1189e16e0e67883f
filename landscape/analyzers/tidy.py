"""The tidy row every analysis emits, and tables of such rows (pandas, CSV).

One observation per row (seaborn / pandas "long form")::

    run, seed, epoch, loss, layer, metric, value, stderr, n_matvecs, converged, residual, probe_seed

``stderr`` is a *statistical* standard error (Hutchinson probes); ``residual`` is a solver's
‖Av − λv‖ (eigenpairs) and ``converged`` says whether the estimate met its stopping rule —
three different things, kept in three columns. ``probe_seed`` is the seed of the random probes
(Hutchinson, SLQ, power/Lanczos start vectors) drawn for this checkpoint. Some analyses add
columns: ``k`` (slice offset), ``x`` (eigenvalue abscissa), ``prev_epoch`` (the epoch a
pairwise analysis compared against), ``slice`` (which 1-D slice), ``curvature`` (``hessian`` or
``ggn``) and ``probe`` (the SLQ probe vector a Ritz value came from).

``layer`` is ``"all"`` (the whole model), a layer's name (``per_layer``), or, for the groups of
``analyze_model(groups=...)``, :data:`GROUP_PREFIX` + the group's name (``"group:0.attn"``): a
prefix grouping's group is often also a layer's name, and (loss, layer, metric) must name one
observation, so ``df["layer"].str.startswith("group:")`` picks the groups out.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

__all__ = ["COLUMNS", "EXTRA_COLUMNS", "GROUP_PREFIX", "row", "to_table", "write_csv"]

#: The columns every tidy table has, in this order; analysis-specific ones follow.
COLUMNS = ["run", "seed", "epoch", "loss", "layer", "metric", "value", "stderr", "n_matvecs",
           "converged", "residual", "probe_seed"]
#: Extra columns some analyses add (kept only when used).
EXTRA_COLUMNS = ["k", "x", "prev_epoch", "slice", "curvature", "probe"]
#: The ``layer`` of a group's rows is this + the group's name (a layer's rows have its bare name).
GROUP_PREFIX = "group:"


def row(meta: dict, **values: Any) -> dict:
    """One tidy row: ``meta`` (run, seed, epoch) plus the given columns, NaN-filled."""
    out: dict[str, Any] = {c: math.nan for c in COLUMNS}
    out["run"] = meta.get("run", "model")
    out["seed"] = meta.get("seed", math.nan)
    out["epoch"] = meta.get("epoch", math.nan)
    out["loss"] = ""
    out["layer"] = "all"
    out["n_matvecs"] = 0
    out.update(values)
    return out


def to_table(rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows -> a tidy DataFrame with the documented columns first (extras only if used)."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    for c in COLUMNS:
        if c not in df:
            df[c] = math.nan
    df["loss"] = df["loss"].astype("string").fillna("").astype(str)  # CSV turns "" into NaN; keep a string
    df["layer"] = df["layer"].astype("string").fillna("all").astype(str)
    extras = [c for c in EXTRA_COLUMNS if c in df and df[c].notna().any()]
    others = [c for c in df.columns if c not in COLUMNS and c not in EXTRA_COLUMNS]
    return df[COLUMNS + extras + others].reset_index(drop=True)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write atomically (a temporary file in the same folder, then ``os.replace``); the temporary
    file is removed if the write fails (a full disk leaves no ``.tmp`` behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
