"""The numbers README.md and docs/ show from a run are the pipeline's: every marked results
block equals the committed docs/results.md, which `make figures` (`--publish`) writes."""

from __future__ import annotations

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


def test_readme_carries_the_published_benchmark():
    published = read_blocks((ROOT / "benchmarks" / "results.md").read_text(encoding="utf-8"))
    readme = read_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "bench" in published and readme["bench"] == published["bench"]
    assert "HVP ÷ one gradient" in published["bench"]
