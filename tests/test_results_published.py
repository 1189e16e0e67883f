"""The numbers README.md and docs/ show from a run are the pipeline's: every marked results
block equals the committed docs/results.md, which `make figures` (`--publish`) writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from landscape.results import BLOCKS, read_blocks

ROOT = Path(__file__).resolve().parents[1]


def test_readme_and_docs_carry_the_published_blocks():
    published = read_blocks((ROOT / "docs" / "results.md").read_text(encoding="utf-8"))
    assert {"provenance", "findings", "accuracy", "timings-cold", "timings-warm"} <= set(published)
    readme = read_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert set(readme) >= set(BLOCKS)
    for name, body in published.items():
        if name in readme:
            assert readme[name] == body, f"README.md's block {name!r} differs from docs/results.md"
    for doc in (ROOT / "docs").glob("*.md"):
        if doc.name == "results.md":
            continue
        for name, body in read_blocks(doc.read_text(encoding="utf-8")).items():
            assert body == published[name], f"{doc.name}'s block {name!r} differs from docs/results.md"
    assert "supported" in published["findings"] and "| ait |" in published["accuracy"]


def test_the_published_accuracy_means_are_the_means_of_the_seeds_beside_them():
    """Each run's "best (mean ± sd)" equals the mean (and sample sd) of the per-seed best values
    printed in its row (to the rounding of those values to 0.1)."""
    block = read_blocks((ROOT / "docs" / "results.md").read_text(encoding="utf-8"))["accuracy"]
    rows = 0
    for line in block.splitlines():
        m = re.match(r"\| (\w+) \| ([\d.]+) ± ([\d.]+) \| [\d.]+ ± [\d.]+ \| (.+) \|$", line)
        if not m:
            continue
        best = [float(seed.split("/")[0]) for seed in m.group(4).split("·")]
        mean = sum(best) / len(best)
        sd = (sum((b - mean) ** 2 for b in best) / (len(best) - 1)) ** 0.5
        assert abs(mean - float(m.group(2))) <= 0.05 + 1e-9, (m.group(1), best, m.group(2))
        assert abs(sd - float(m.group(3))) <= 0.1, (m.group(1), best, m.group(3))
        rows += 1
    assert rows == 6  # the teacher and the five runs


def test_readme_carries_the_published_benchmark():
    published = read_blocks((ROOT / "benchmarks" / "results.md").read_text(encoding="utf-8"))
    readme = read_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "bench" in published and readme["bench"] == published["bench"]
    assert "HVP ÷ one gradient" in published["bench"]
    # the block's numbers are the measurements make bench recorded (not a stale copy)
    summary = json.loads((ROOT / "benchmarks" / "summary.json").read_text(encoding="utf-8"))
    assert (f"| one HVP ÷ one gradient | {summary['hvp_ratio']:.2f} (median of per-round ratios "
            f"{summary['hvp_ratio_per_round']:.2f}) |") in published["bench"]
    assert f"Lanczos {summary['eig_ratio_lanczos']:.2f}, power {summary['eig_ratio_power']:.2f}" in published["bench"]
