"""The two tiny recipes of the suite, each defined once (see the top of tests/conftest.py):
``TINY``, the seconds-long ``analyses/digits_tiny.toml`` the trainer's tests share (its trained
runs: the session fixture ``digits_tiny``), and ``TINY_PIPELINE``, the two-epoch pipeline recipe
under tests/fixtures/ that the pipeline and analyzer tests change copies of."""

from pathlib import Path

import pytest

from landscape.config import load_recipe
from landscape.zsq.runs import train_recipe

TINY = Path(__file__).resolve().parents[1] / "analyses" / "digits_tiny.toml"
TINY_PIPELINE = Path(__file__).resolve().parent / "fixtures" / "tiny_pipeline.toml"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(TINY)


def tiny_pipeline() -> dict:
    """A fresh (validated) dict of ``TINY_PIPELINE``: change it freely."""
    return load_recipe(TINY_PIPELINE)


def train_tiny(recipe, out, runs=None, **kwargs) -> list[Path]:
    """``train_recipe`` on the CPU without progress bars."""
    return train_recipe(recipe, runs=runs, out=out, device="cpu", progress=False, **kwargs)
