"""The runnable examples in the engine's docstrings (each against an exact matrix) stay runnable."""

import doctest
import importlib

import pytest

MODULES = ["hessian", "ggn", "power", "lanczos", "slq"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, one_thread):
    module = importlib.import_module(f"landscape.curvature.{name}")  # (the package re-exports same-named functions)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
