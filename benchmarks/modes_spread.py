"""How far each verdict's number moves between the reproducible and the fast kernel mode.

    python benchmarks/modes_spread.py REPRODUCIBLE_TABLES FAST_TABLES     # writes benchmarks/modes_spread.md

Judges the paper's claims on two tables folders written by ``make figures`` from the same recipe
and seeds, one in each kernel mode (``landscape figures ... --fast`` for the second), and prints
a Markdown table of both verdicts and both numbers per claim, and the accuracy tables side by
side. ``--publish`` writes it into the ``modes`` block of that file, so the documented spread
is never typed by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from landscape.findings import claims
from landscape.results import accuracy_table


def spread(repro: Path, fast: Path) -> str:
    a = {r["id"]: r for r in claims(repro, firmness=False)}
    b = {r["id"]: r for r in claims(fast, firmness=False)}
    lines = ["| # | reproducible: verdict (scale-free) | fast: verdict (scale-free) | reproducible: number | fast: number |",
             "|---|---|---|---|---|"]
    for i in sorted(a):
        def v(r):
            return r["verdict"] + (f" ({r['scale_free_verdict']})" if r.get("scale_free_verdict") else "")
        same = "" if v(a[i]) == v(b[i]) else " **(differs)**"
        lines.append(f"| {i} | {v(a[i])} | {v(b[i])}{same} | {a[i]['number']} | {b[i]['number']} |")
    lines += ["", "Accuracy, reproducible mode:", "", accuracy_table(repro), "", "Accuracy, fast mode:", "",
              accuracy_table(fast)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    repro, fast = map(Path, sys.argv[1:3])
    text = (f"# Verdicts and numbers in the two kernel modes\n\nWritten by `python benchmarks/modes_spread.py {repro} "
            f"{fast}`: the same recipe and seeds, `make figures` in the reproducible mode and with `--fast`.\n\n"
            + spread(repro, fast))
    print(text)
    (Path(__file__).resolve().parent / "modes_spread.md").write_text(text, encoding="utf-8")
