"""The seconds-long digits_tiny recipe the trainer's tests share (imported, defined once)."""

from pathlib import Path

import pytest

from landscape.config import load_recipe
from landscape.zsq.runs import train_recipe

TINY = Path(__file__).resolve().parents[1] / "analyses" / "digits_tiny.toml"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(TINY)


def train_tiny(recipe, out, runs=None, **kwargs) -> list[Path]:
    """``train_recipe`` on the CPU without progress bars."""
    return train_recipe(recipe, runs=runs, out=out, device="cpu", progress=False, **kwargs)
