"""Final test accuracies of a recipe's runs over seeds: the README's mean ± std table.

    python -m landscape.zsq.report checkpoints/default
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

RUN_ORDER = ["teacher", "ptq", "kd", "gdfq", "kl", "ait"]


def final_accuracies(recipe_dir: str | Path) -> pd.DataFrame:
    """One row per run folder: run, seed, epoch, test_acc, teacher_acc (last metrics.csv row)."""
    rows = []
    for metrics in sorted(Path(recipe_dir).glob("*-seed*/metrics.csv")):
        run, seed = metrics.parent.name.rsplit("-seed", 1)
        table = pd.read_csv(metrics)
        if table.empty:
            continue
        last = table.iloc[-1]
        rows.append({"run": run, "seed": int(seed), "epoch": int(last.epoch),
                     "test_acc": float(last.test_acc), "teacher_acc": float(last.teacher_acc)})
    if not rows:
        raise FileNotFoundError(f"no <run>-seed<S>/metrics.csv under {recipe_dir}; train the recipe first")
    return pd.DataFrame(rows)


def accuracy_table(recipe_dir: str | Path) -> pd.DataFrame:
    """mean, std (ddof=1) and n of the final test accuracy per run, the teacher included."""
    df = final_accuracies(recipe_dir)
    teacher = df.drop_duplicates("seed")[["seed", "teacher_acc"]].rename(columns={"teacher_acc": "test_acc"})
    df = pd.concat([df[["run", "seed", "test_acc"]], teacher.assign(run="teacher")])
    out = df.groupby("run").test_acc.agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    order = [r for r in RUN_ORDER if r in out.index] + [r for r in out.index if r not in RUN_ORDER]
    return out.loc[order]


def markdown(table: pd.DataFrame) -> str:
    lines = ["| run | test accuracy (%) | seeds |", "|---|---|---|"]
    for run, r in table.iterrows():
        std = "" if pd.isna(r["std"]) else f" ± {r['std']:.2f}"
        lines.append(f"| {run} | {r['mean']:.2f}{std} | {int(r['n'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(accuracy_table(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/default")))
