"""No traceback from any corrupt byte (issue 19 §6): a few hundred random bit flips and
truncations of a checkpoint, a teacher file, a cache entry and the two logs each end in the
reader's documented one-line error naming the file (or a sound read: a flip in zip padding),
never another exception; `train` retrains an epoch whose checkpoint is corrupt and rebuilds a
corrupt teacher, as it does for missing ones."""

import random
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from landscape.analyzers.cache import Cache
from landscape.checkpoints import check_placement, load_checkpoint, load_teacher_file
from landscape.config import load_recipe
from landscape.errors import LandscapeError
from landscape.pretrained import load_state_dict_file
from landscape.sealed_logs import LogWarning, sealed_crossings, sealed_metrics
from landscape.zsq.tables import read_crossings, read_metrics
from tiny_runs import TINY, train_tiny

ROOT = Path(__file__).resolve().parents[1]
CASES = 80  # per reader: 9 readers, 720 cases


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """A truncation (1 in 5) or 1, 2 or 8 random bit flips."""
    if rng.random() < 0.2:
        return data[:rng.randrange(len(data))]
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 8])):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


@pytest.fixture
def copy(tiny_kd, tmp_path):
    shutil.copytree(tiny_kd, tmp_path / "ck")
    return tmp_path / "ck"


def test_fuzz_the_readers(copy, tmp_path):
    kd = copy / "digits_tiny" / "kd-seed0"
    teacher = next((copy / "teachers").glob("*.pt"))
    cache = Cache(tmp_path / "cache")
    cache.put("trace", "k" * 24, [{"run": "kd", "seed": 0, "epoch": e, "loss": "ce", "layer": "all",
                                   "metric": "trace", "value": 1.5 * e} for e in (1, 2, 3)])
    entry = tmp_path / "cache" / "trace" / f"{'k' * 24}.csv"
    spec = load_checkpoint(kd / "epoch_0001.pt")["model_spec"]

    def cache_get(p):
        if cache.get("trace", "k" * 24) is None:  # never raises: a bad entry is recomputed
            raise LandscapeError(f"{p} rejected")

    readers = [("checkpoint", kd / "epoch_0002.pt", load_checkpoint),
               ("checkpoint placement", kd / "epoch_0002.pt", check_placement),
               ("teacher", teacher, load_teacher_file),
               ("teacher as [teacher] weights", teacher, lambda p: load_state_dict_file(p, spec)),
               ("cache entry", entry, cache_get),
               ("metrics.csv", kd / "metrics.csv", read_metrics),
               ("crossings.csv", kd / "crossings.csv", read_crossings),
               ("metrics.csv vs checkpoints", kd / "metrics.csv", lambda p: sealed_metrics(p.parent)),
               ("crossings.csv vs checkpoints", kd / "crossings.csv", lambda p: sealed_crossings(p.parent))]
    rng = random.Random(19)
    outcomes: Counter = Counter()
    warnings.simplefilter("ignore", LogWarning)  # rows dropped or rebuilt: said, and counted as a read
    for what, path, read in readers:
        original = path.read_bytes()
        for _ in range(CASES):
            path.write_bytes(_mutate(rng, original))
            try:
                read(path)
                outcomes[(what, "read")] += 1
            except LandscapeError as exc:
                msg = str(exc)
                assert "\n" not in msg and str(path) in msg, (what, msg)
                outcomes[(what, type(exc).__name__)] += 1
        path.write_bytes(original)
    print("\nfuzz outcomes (reader, outcome): count")
    for key, n in sorted(outcomes.items()):
        print(f"  {key[0]:30s} {key[1]:18s} {n}")
    assert sum(outcomes.values()) == CASES * len(readers)
    for what, _, _ in readers:  # most mutations are caught, by the reader's own error
        if what == "checkpoint placement":  # reads the small pickle only: flipped weights pass it
            continue
        assert sum(n for (w, o), n in outcomes.items() if w == what and o != "read") >= CASES // 2, what


def _flip(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_train_retrains_an_epoch_whose_checkpoint_is_corrupt_and_rebuilds_a_corrupt_teacher(copy, tiny_kd):
    kd, ref = copy / "digits_tiny" / "kd-seed0", tiny_kd / "digits_tiny" / "kd-seed0"
    teacher = next((copy / "teachers").glob("*.pt"))
    _flip(kd / "epoch_0002.pt", 26, 5)  # the zip's first header: torch's unpickler says IndexError
    _flip(teacher, 26, 5)
    with pytest.raises(LandscapeError, match="epoch_0002.pt is truncated or corrupt"):
        load_checkpoint(kd / "epoch_0002.pt")
    steps = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_tiny(load_recipe(TINY), copy, ["kd"], step_hook=lambda run, epoch, step: steps.append(epoch))
    said = " ".join(str(w.message) for w in caught)
    assert "teacher is rebuilt" in said and "training resumes after epoch 1" in said
    assert sorted(set(steps)) == [2, 3]
    for name in ("epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt", "crossings.csv"):
        assert (kd / name).read_bytes() == (ref / name).read_bytes(), name
    assert teacher.read_bytes() == next((tiny_kd / "teachers").glob("*.pt")).read_bytes()


def test_the_command_line_names_a_corrupt_checkpoint_in_one_line(copy, tmp_path):
    """`landscape analyze` on a checkpoint that made torch's unpickler raise IndexError: exit 3,
    the file named, no traceback."""
    import os

    kd = copy / "digits_tiny" / "kd-seed0"
    _flip(kd / "epoch_0002.pt", 26, 5)
    p = subprocess.run([sys.executable, "-m", "landscape", "analyze", str(kd), "--analyses", "crossings",
                        "--out", str(tmp_path / "t"), "--device", "cpu"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    assert f"{kd / 'epoch_0002.pt'}: load: CheckpointError" in p.stderr


def test_a_text_file_as_teacher_weights_is_one_line(copy, tmp_path):
    """`[teacher] weights = "/etc/passwd"`-like: a RecipeError naming the key, not an IndexError."""
    notes = tmp_path / "passwd"
    notes.write_text("root:x:0:0:root:/root:/bin/bash\n" * 40)
    recipe = load_recipe(TINY)
    recipe["teacher"]["weights"] = str(notes)
    with pytest.raises(LandscapeError, match=rf"weights = {str(notes)!r} is not a torch state_dict file"):
        train_tiny(recipe, tmp_path / "o", ["kd"])
