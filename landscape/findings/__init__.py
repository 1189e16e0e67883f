"""Findings: does our evidence support each claim of the paper?

    from landscape.findings import claims
    claims("figures/tables")   # -> [{id, claim, number, verdict, scale_free_verdict, rule, ...}]

Each claim is one function in :mod:`.rules` with its rule written next to it; levels are
``supported``, ``suggestive``, ``not supported`` and ``no data`` (:mod:`.verdicts`); intervals
come from a hierarchical bootstrap over seeds and epochs, Hutchinson standard errors, SLQ
probe vectors and paired t-intervals over seeds (:mod:`.stats`). Nothing here recomputes an
analysis or imports a plotting library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from landscape.findings.rules import CLAIMS, Claim, check_all
from landscape.findings.verdicts import LEVELS, NO_DATA, NOT_SUPPORTED, SUGGESTIVE, SUPPORTED
from landscape.tables import TABLE_NAMES, load_tables, resolve_roles

__all__ = ["claims", "load_tables", "claims_table", "Claim", "CLAIMS", "LEVELS", "SUPPORTED", "SUGGESTIVE",
           "NOT_SUPPORTED", "NO_DATA", "TABLE_NAMES"]

def claims(tables_dir: str | Path, roles: Mapping | None = None, tables: Mapping | None = None, *,
           firmness: bool = True) -> list[dict]:
    """The paper's claims against the tables in ``tables_dir`` (or ``tables``, already read by
    :func:`load_tables`).

    Returns one dict per claim: ``id``, ``claim``, ``number`` (the effect with its 95 % interval),
    ``verdict`` (the paper's raw comparison), ``scale_free_verdict`` (claims 2–4; None for the
    others), ``rule``, ``scale_free_rule``, ``notes`` (e.g. the two verdicts disagree), and with
    ``firmness`` (two seeds or more) how firmly each verdict stands
    (:mod:`.robustness`): ``firmness`` ``{column: "k of n leave-one-out; p % of resamples"}``
    and ``on_boundary`` (a single left-out seed changes a verdict).
    """
    tables = load_tables(tables_dir) if tables is None else tables
    roles = resolve_roles(roles)
    rows = [c.as_dict() for c in check_all(tables, roles)]
    if firmness:
        from landscape.findings.robustness import firmness as judge_firmness

        firm = judge_firmness(tables, roles, rows)
        for r in rows:
            f = firm.get(r["id"], {})
            r["firmness"] = {column: x.text() for column, x in f.items()}
            r["on_boundary"] = any(x.on_boundary for x in f.values())
    return rows


def claims_table(rows: list[dict]) -> str:
    """The claims as a Markdown table with both verdict columns."""
    firm = any(r.get("firmness") for r in rows)
    lines = ["| # | The paper's claim | Our number (95 % interval) | Verdict (raw, as the paper) | Scale-free verdict |"
             + (" How firmly (each seed left out; seed resamples) |" if firm else ""),
             "|---|---|---|---|---|" + ("---|" if firm else "")]
    for r in rows:
        sf = r.get("scale_free_verdict")
        number = r["number"] + "".join(f" — **{n}**" for n in r.get("notes") or [] if "disagree" in n)
        line = (f"| {r['id']} | {r['claim']} | {number} | **{r['verdict']}** | "
                f"{'**' + sf + '**' if sf else '—'} |")
        if firm:
            f = r.get("firmness") or {}
            parts = [f.get("verdict", "—")] + ([f"scale-free: {f['scale_free_verdict']}"]
                                               if "scale_free_verdict" in f else [])
            line += " " + "<br>".join(parts) + " |"
        lines.append(line)
    return "\n".join(lines)
