"""Logs checked against the sealed checkpoints on every read (issue 19 §5): the checkpoints
decide which epochs are committed and their numbers; a lost row is rebuilt from its
checkpoint, an uncommitted one dropped, an edited or out-of-range value or a deleted
crossings row named (one LogError line, the file and the line)."""

import shutil
import warnings

import pandas as pd
import pytest

from landscape.analyzers.crossings import from_log
from landscape.analyzers.discovery import training_rows
from landscape.checkpoints import load_checkpoint
from landscape.sealed_logs import LogWarning, sealed_metrics
from landscape.zsq.report import accuracies
from landscape.zsq.tables import LogError, read_metrics


@pytest.fixture
def kd(tiny_kd, tmp_path):
    shutil.copytree(tiny_kd, tmp_path / "ck")
    return tmp_path / "ck" / "digits_tiny" / "kd-seed0"


def _lines(kd, name="metrics.csv"):
    return (kd / name).read_text().splitlines(keepends=True)


def _set_test_acc_of_epoch_2(kd, value):
    """Overwrite the test_acc field of metrics.csv line 3 (epoch 2) with ``value``."""
    lines = _lines(kd)
    fields = lines[2].split(",")
    fields[2] = value
    lines[2] = ",".join(fields)
    (kd / "metrics.csv").write_text("".join(lines))


def _acc(kd, epoch):
    return load_checkpoint(kd / f"epoch_{epoch:04d}.pt")["metrics"]["test_acc"]


def test_a_lost_last_row_is_rebuilt_from_its_checkpoint(kd):
    (kd / "metrics.csv").write_text("".join(_lines(kd)[:-1]))
    with pytest.warns(LogWarning, match=r"no row for epoch\(s\) 3, whose checkpoints are sound: rebuilt"):
        acc = accuracies(kd)
    assert acc["epochs"].tolist() == [3] and acc["final_acc"].tolist() == [_acc(kd, 3)]
    with pytest.warns(LogWarning):
        rows = pd.DataFrame(training_rows(kd, {"run": "kd", "seed": 0}))
    assert sorted(rows.epoch.unique()) == [1, 2, 3]
    assert rows[(rows.epoch == 3) & (rows.metric == "test_acc")].value.tolist() == [_acc(kd, 3)]


def test_a_deleted_log_is_rebuilt_whole(kd):
    ref = read_metrics(kd / "metrics.csv")
    (kd / "metrics.csv").unlink()
    with pytest.warns(LogWarning, match="the file is missing"):
        rebuilt = sealed_metrics(kd)
    pd.testing.assert_frame_equal(rebuilt.drop(columns="seconds"), ref.drop(columns="seconds"))
    with pytest.warns(LogWarning):
        assert accuracies(kd)["final_acc"].tolist() == [_acc(kd, 3)]


def test_an_uncommitted_row_is_left_out(kd):
    """A kill between the log append and the checkpoint save leaves a row with no checkpoint."""
    lines = _lines(kd)
    (kd / "metrics.csv").write_text("".join(lines) + lines[-1].replace("3,train,", "4,train,", 1))
    with pytest.warns(LogWarning, match=r"epoch\(s\) 4 have no checkpoint .* uncommitted"):
        acc = accuracies(kd)
    assert acc["epochs"].tolist() == [3]


@pytest.mark.parametrize("value", ["inf", "250", "-1e308", "-0.5"])
def test_an_accuracy_out_of_range_is_named(kd, value):
    _set_test_acc_of_epoch_2(kd, value)
    with pytest.raises(LogError, match=r"metrics.csv line 3: test_acc = .* is out of range; expected a "
                                       r"number in \[0, 100\]"):
        accuracies(kd)


def test_an_edited_value_in_range_disagrees_with_its_checkpoint(kd):
    _set_test_acc_of_epoch_2(kd, "99.0")
    with pytest.raises(LogError, match=r"line 3: test_acc = 99.0, but the sealed checkpoint epoch_0002.pt "
                                       r"says 93\.8"):
        accuracies(kd)


def test_a_deleted_crossings_row_is_named(kd):
    lines = _lines(kd, "crossings.csv")
    del lines[6]  # a middle row of epoch 2
    (kd / "crossings.csv").write_text("".join(lines))
    with pytest.raises(LogError, match=r"crossings.csv: epoch 2's 15 rows give crossing_fraction = .* but "
                                       r"metrics.csv .* says"):
        from_log(kd, {"run": "kd", "seed": 0})


def test_a_sound_run_reads_silently(kd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(from_log(kd, {"run": "kd", "seed": 0})) > 0
        assert accuracies(kd)["final_acc"].tolist() == [_acc(kd, 3)]
