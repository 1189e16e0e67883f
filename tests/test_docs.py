"""Every Python block in README.md and docs/*.md runs as pasted.

The blocks of one file run in order in one fresh interpreter (a reader pastes them one after
the other), in an empty temporary folder, with the repository on ``PYTHONPATH``. A failing
block is named by its file and line. A block followed by a ```text block (at most two lines
of prose between, e.g. "prints") is checked against it: the same words, numbers equal to
1e-3 relative (the printed digits of float32 work may differ in the last places across CPUs).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, expected output or None)`` of every Python block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    fences = list(_FENCE.finditer(text))
    out = []
    for i, m in enumerate(fences):
        if m.group(1) != "python":
            continue
        expected = None
        if i + 1 < len(fences) and fences[i + 1].group(1) == "text":
            between = text[m.end(): fences[i + 1].start()].strip()
            if len(between.splitlines()) <= 2:
                expected = fences[i + 1].group(2)
        out.append((text[: m.start()].count("\n") + 1, m.group(2), expected))
    return out


def _program(path: Path, record: Path) -> str:
    parts = ["import contextlib, io, json, sys, traceback", "_outputs = []"]
    for line, code, _ in blocks(path):
        parts.append(textwrap.dedent(f"""
            _buffer = io.StringIO()
            try:
                with contextlib.redirect_stdout(_buffer):
                    exec(compile({code!r}, {f'{path.name}:{line}'!r}, "exec"))
            except BaseException:
                print(_buffer.getvalue())
                traceback.print_exc()
                sys.exit("block at {path.name} line {line} failed")
            print(_buffer.getvalue(), end="")
            _outputs.append(_buffer.getvalue())
        """))
    parts.append(f"open({str(record)!r}, 'w').write(json.dumps(_outputs))")
    return "\n".join(parts)


def same_output(got: str, want: str, rel: float = 1e-3) -> bool:
    """Words equal, numbers equal to ``rel``."""
    g, w = got.split(), want.split()
    if len(g) != len(w):
        return False
    for a, b in zip(g, w):
        na, nb = _NUMBER.findall(a), _NUMBER.findall(b)
        if _NUMBER.sub("#", a) != _NUMBER.sub("#", b) or len(na) != len(nb):
            return False
        if not all(math.isclose(float(x), float(y), rel_tol=rel, abs_tol=1e-12) for x, y in zip(na, nb)):
            return False
    return True


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)], ids=lambda p: p.name)
def test_the_python_blocks_run_as_pasted(path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    record = tmp_path / "outputs.json"
    proc = subprocess.run([sys.executable, "-c", _program(path, record)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{path.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    outputs = json.loads(record.read_text())
    for (line, _, expected), got in zip(blocks(path), outputs):
        if expected is not None:
            assert same_output(got, expected), f"{path.name}:{line} printed\n{got}\nbut the doc shows\n{expected}"


def test_output_comparison_is_strict_about_words_and_loose_about_last_digits():
    assert same_output("value=1.00004 x", "value=1.0000 x")
    assert not same_output("value=1.1 x", "value=1.0 x")
    assert not same_output("converged=False", "converged=True")
