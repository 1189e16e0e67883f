"""Every Python block in README.md and docs/*.md runs as pasted.

The blocks of one file run in order in one fresh interpreter (a reader pastes them one after
the other), in an empty temporary folder, with the repository on ``PYTHONPATH``. A failing
block is named by its file and line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def _program(path: Path) -> str:
    parts = ["import sys, traceback"]
    for line, code in blocks(path):
        parts.append(textwrap.dedent(f"""
            try:
                exec(compile({code!r}, {f'{path.name}:{line}'!r}, "exec"))
            except BaseException:
                traceback.print_exc()
                sys.exit("block at {path.name} line {line} failed")
        """))
    return "\n".join(parts)


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)], ids=lambda p: p.name)
def test_the_python_blocks_run_as_pasted(path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", _program(path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{path.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
