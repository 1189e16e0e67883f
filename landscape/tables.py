"""Reading the tidy tables the analyzers write, and which run plays which role.

Figures and findings both read ``<tables_dir>/<analysis>.csv``; neither computes anything
from checkpoints. This module holds what they share and imports no plotting library, so the
findings can be computed where matplotlib is absent.

Roles: the paper's argument contrasts runs by what they *are* — real-data distillation (KD),
zero-shot GDFQ (ZQ), KL-only ZQ, AIT and post-training quantization (PTQ). A recipe's
``[figures]`` table says which of its runs plays which role; :data:`DEFAULT_ROLES` are the
names of the shipped recipes.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Mapping

import pandas as pd

from landscape.errors import LandscapeError

__all__ = ["DEFAULT_ROLES", "ROLE_NAMES", "TABLE_NAMES", "TableError", "read_table", "load_tables", "resolve_roles",
           "not_converged"]

#: Which run plays which role; a recipe's ``[figures]`` table may override any of these.
DEFAULT_ROLES: dict = {"kd": "kd", "zq": "gdfq", "kl_only": "kl", "ait": "ait", "ptq": "ptq",
                       "accuracy": ["ptq", "kd", "gdfq", "kl", "ait"]}
#: The roles that name one run each (``accuracy`` lists the runs of the accuracy figure).
ROLE_NAMES = ("kd", "zq", "kl_only", "ait", "ptq")
#: The tidy tables that figures and findings read (``<tables_dir>/<name>.csv``).
TABLE_NAMES = ("cosine", "trace", "eigen", "density", "interepoch", "crossings", "training")
#: The columns figures and findings index in every tidy table (``training`` needs no loss/layer).
KEY_COLUMNS = ("run", "seed", "epoch", "metric", "value")


class TableError(LandscapeError, ValueError):
    """Tables or roles that cannot be used: one clear line naming the thing and the fix.

    Also a ``ValueError`` (what it was before 0.3)."""


def resolve_roles(roles: Mapping | None = None) -> dict:
    """:data:`DEFAULT_ROLES` overlaid with ``roles``; an unknown key is an error naming the closest."""
    out = dict(DEFAULT_ROLES)
    for key, value in (roles or {}).items():
        if key not in DEFAULT_ROLES:
            match = difflib.get_close_matches(key, DEFAULT_ROLES, n=1)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise TableError(f"unknown key {key!r} in [figures]{hint}; allowed: {', '.join(DEFAULT_ROLES)}")
        if key == "accuracy":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TableError(f"[figures] accuracy = {value!r}: expected a list of run names")
        elif not isinstance(value, str):
            raise TableError(f"[figures] {key} = {value!r}: expected a run name (a string)")
        out[key] = value
    return out


def read_table(tables_dir: Path | str, name: str) -> pd.DataFrame | None:
    """The tidy table ``<tables_dir>/<name>.csv``, or None when it is missing or has no rows.

    A file that exists but cannot be parsed, or lacks a column figures and findings index
    (:data:`KEY_COLUMNS`), is a :class:`TableError` naming it (a silently missing table would
    turn a verdict into "no data" for the wrong reason).
    """
    path = Path(tables_dir) / f"{name}.csv"
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TableError(f"table {path} is not a readable CSV ({type(exc).__name__}); "
                         "rerun `landscape analyze` (or `make figures`) to rewrite it") from None
    missing = [c for c in KEY_COLUMNS + (() if name == "training" else ("loss", "layer")) if c not in df]
    if missing and not df.empty:  # else a KeyError deep in a figure or a claim, far from the file
        raise TableError(f"table {path} has no column(s) {', '.join(missing)} (is it a landscape table?); "
                         "rerun `landscape analyze` (or `make figures`) to rewrite it")
    if "loss" in df:
        df["loss"] = df["loss"].astype("string").fillna("").astype(str)
    if "layer" in df:
        df["layer"] = df["layer"].astype("string").fillna("all").astype(str)
    return None if df.empty else df


def load_tables(tables_dir: Path | str) -> dict:
    """``{name: DataFrame or None}`` for every table of :data:`TABLE_NAMES` (read once, shared
    by the figures, the claims and the results file)."""
    return {n: read_table(tables_dir, n) for n in TABLE_NAMES}


def not_converged(df: pd.DataFrame) -> pd.Series:
    """Rows whose estimate missed its stopping rule (``converged`` present and not true)."""
    if "converged" not in df:
        return pd.Series(False, index=df.index)
    c = df["converged"]
    return c.notna() & ~c.astype(str).str.lower().isin(["true", "1", "1.0"])
