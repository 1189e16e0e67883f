"""The results file: the numbers a reader of README.md sees, written by the pipeline only.

``make figures`` writes ``figures/results.md`` with marked blocks::

    <!-- results:provenance --> ... <!-- /results:provenance -->   recipe, seeds, threads, torch
    <!-- results:findings -->   ... <!-- /results:findings -->     the claims with both verdicts
    <!-- results:accuracy -->   ... <!-- /results:accuracy -->     best and final accuracy per run
    <!-- results:timings-cold --> ... wall and CPU seconds per stage of a run that trained and
                                     analysed (the venv's set-up time included when known)
    <!-- results:timings-warm --> ... the same for a run that found everything done and cached

``landscape figures --publish README.md`` copies every block into the same markers of that
file and into the committed ``docs/results.md`` (which keeps the block of the other kind of
run), so no documented number is typed by hand; a test checks that README.md's blocks equal
``docs/results.md``'s.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Mapping

import pandas as pd

from landscape.errors import LandscapeError
from landscape.findings import claims, claims_table
from landscape.tables import read_table, resolve_roles

__all__ = ["BLOCKS", "PublishError", "accuracy_table", "write_results", "read_blocks", "replace_blocks",
           "publish_results"]

BLOCKS = ("provenance", "findings", "accuracy", "timings-cold", "timings-warm")


class PublishError(LandscapeError, ValueError):
    """``--publish README`` names a file without the results markers to copy the blocks into."""


_BLOCK_RE = re.compile(r"<!-- results:(?P<name>[a-z:-]+) -->\n(?P<body>.*?)<!-- /results:(?P=name) -->", re.S)


def accuracy_table(tables_dir: str | Path, roles: Mapping | None = None, tables: Mapping | None = None) -> str:
    """Best and final test accuracy (%) per run: mean ± std over seeds, and per seed (best / final).
    ``tables``: the tables already read (:func:`landscape.tables.load_tables`)."""
    roles = resolve_roles(roles)
    df = read_table(tables_dir, "training") if tables is None else tables.get("training")
    if df is None:
        return "(no training table)"
    seeds = df["seed"].fillna(-1)
    rows = []
    for (run, seed), g in df.groupby(["run", seeds], sort=False):
        g = g.sort_values("epoch")
        acc = g[g["metric"] == "test_acc"]["value"]
        best = g[g["metric"] == "best_acc"]["value"]
        teacher = g[g["metric"] == "teacher_acc"]["value"]
        if acc.empty:
            continue
        rows.append({"run": run, "seed": seed, "final": float(acc.iloc[-1]),
                     "best": float(best.iloc[-1]) if len(best) else float(acc.max()),
                     "teacher": float(teacher.iloc[-1]) if len(teacher) else math.nan})
    t = pd.DataFrame(rows)
    if t.empty:
        return "(no accuracy rows)"
    order = ["teacher"] + list(roles["accuracy"]) + sorted(set(t["run"]) - set(roles["accuracy"]))
    teacher = t.drop_duplicates("seed")[["seed", "teacher"]].rename(columns={"teacher": "best"})
    teacher = teacher.assign(final=teacher["best"], run="teacher")
    t = pd.concat([teacher, t], ignore_index=True)

    def ms(x: pd.Series) -> str:
        return f"{x.mean():.2f} ± {x.std(ddof=1):.2f}" if len(x) > 1 else f"{x.mean():.2f}"

    labels = " · ".join(str(int(s)) if s >= 0 else "?" for s in sorted(t["seed"].unique()))
    lines = [f"| run | best test accuracy (%) | final test accuracy (%) | per seed ({labels}): best / final |",
             "|---|---|---|---|"]
    for run in order:
        g = t[t["run"] == run].sort_values("seed")
        if g.empty:
            continue
        per = " · ".join(f"{b:.1f} / {f:.1f}" if run != "teacher" else f"{b:.1f}" for b, f in zip(g["best"], g["final"]))
        lines.append(f"| {run} | {ms(g['best'])} | {ms(g['final'])} | {per} |")
    return "\n".join(lines)


def _timings(wall: Mapping[str, float], cpu: Mapping[str, float]) -> str:
    lines = ["| stage | wall (s) | CPU time, all processes (s) |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} | {cpu[k]:.0f} |" if math.isfinite(cpu.get(k, math.nan)) else f"| {k} | {v:.0f} | — |"
              for k, v in wall.items()]
    return "\n".join(lines)


def write_results(tables_dir: str | Path, path: str | Path, roles: Mapping | None = None,
                  provenance: Mapping | None = None, wall: Mapping | None = None,
                  cpu: Mapping | None = None, warm: bool = False, rows: list[dict] | None = None,
                  tables: Mapping | None = None) -> Path:
    """Write the results file from the tables and this run's timings (block ``timings-warm`` if
    the run found everything trained and cached, else ``timings-cold``). ``rows`` and
    ``tables``: the claims and the tables a caller already has (else computed and read here)."""
    roles = resolve_roles(roles)
    rows = claims(tables_dir, roles, tables) if rows is None else rows
    body = {
        "provenance": "; ".join(f"{k} {v}" for k, v in (provenance or {}).items()),
        "findings": claims_table(rows),
        "accuracy": accuracy_table(tables_dir, roles, tables),
        "timings-warm" if warm else "timings-cold": _timings(wall or {}, cpu or {}),
    }
    text = ["# Results of `make figures`", "",
            "Written by the pipeline; `landscape figures --publish README.md` copies these blocks into the README.", ""]
    for name in BLOCKS:
        if name in body:
            text += [f"## {name}", "", f"<!-- results:{name} -->", body[name], f"<!-- /results:{name} -->", ""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text), encoding="utf-8")
    return path


def read_blocks(text: str) -> dict[str, str]:
    """``{name: body}`` of every marked block in a text."""
    return {m.group("name"): m.group("body") for m in _BLOCK_RE.finditer(text)}


def replace_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with the body of every marked block that ``blocks`` has replaced."""
    def sub(m):
        name = m.group("name")
        body = blocks.get(name, m.group("body"))
        return f"<!-- results:{name} -->\n{body}<!-- /results:{name} -->"

    return _BLOCK_RE.sub(sub, text)


def publish_results(results: str | Path, readme: str | Path, copy_to: str | Path | None = None) -> None:
    """Copy the results file's blocks into ``readme``'s markers and into the markers of every
    ``docs/*.md`` beside it, and into ``copy_to`` (created from the results file when absent;
    a block it holds that this run did not write is kept; default ``docs/results.md`` beside
    the README)."""
    blocks = read_blocks(Path(results).read_text(encoding="utf-8"))
    readme = Path(readme)
    copy_to = Path(copy_to) if copy_to else readme.parent / "docs" / "results.md"
    docs = [p for p in sorted((readme.parent / "docs").glob("*.md"))
            if "<!-- results:" in p.read_text(encoding="utf-8") and p.resolve() != copy_to.resolve()]
    missing = [b for b in blocks if f"<!-- results:{b} -->" not in readme.read_text(encoding="utf-8")]
    if missing:
        raise PublishError(f"{readme} has no marker for the results block(s) {missing}; add "
                           f"'<!-- results:NAME -->' / '<!-- /results:NAME -->' lines where they belong")
    for target in [readme, *docs, copy_to]:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(results, target)
            continue
        old = target.read_text(encoding="utf-8")
        new = replace_blocks(old, blocks)
        if target == copy_to:
            for name in blocks:
                if f"<!-- results:{name} -->" not in new:
                    new += f"\n## {name}\n\n<!-- results:{name} -->\n{blocks[name]}<!-- /results:{name} -->\n"
        if new != old:
            target.write_text(new, encoding="utf-8")
