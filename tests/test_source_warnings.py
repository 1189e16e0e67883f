"""Every module of the package compiles without a warning: an invalid escape such as ``\\d`` in a
docstring that is not raw (analyze_model's once) is a DeprecationWarning now, a SyntaxWarning from
Python 3.12 and an error later."""

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "landscape").rglob("*.py"))


def test_the_check_sees_an_invalid_escape():
    with warnings.catch_warnings(), pytest.raises((DeprecationWarning, SyntaxWarning, SyntaxError)):
        warnings.simplefilter("error")
        compile('def f():\n    """a regex r"blocks\\.(\\d+)"."""\n', "example.py", "exec")


def test_every_module_compiles_without_warnings():
    assert len(SOURCES) > 50
    bad = []
    for path in SOURCES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
            except (DeprecationWarning, SyntaxWarning, SyntaxError) as exc:
                bad.append(f"{path.relative_to(ROOT)}: {exc}")
    assert not bad, "; ".join(bad) + " (make the docstring raw: r\"\"\"...)"
