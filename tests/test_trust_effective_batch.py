"""The effective batch (N ranks × per-rank batch) stated in metrics.csv and `landscape report`
(issue 10 §3), while a metrics.csv written before the column existed is still accepted and
checkpoints keep their content (the column is not part of the checkpoint's metrics)."""

import json
import shutil

import pandas as pd
import pytest

from distributed_helpers import run_ranks
from landscape.checkpoints import load_checkpoint
from landscape.zsq import tables
from landscape.zsq.report import accuracies, report
from landscape.zsq.runs import train_recipe
from tiny_runs import recipe  # noqa: F401 - the shared fixture

BATCH = 32  # digits_tiny's [train] batch_size


@pytest.fixture(scope="module")
def trained(digits_tiny):
    """The session's digits_tiny root (all five runs and the teacher; read-only: copy it to change it)."""
    return digits_tiny


def _legacy(path):
    """Rewrite a metrics.csv as landscape wrote it before effective_batch: the last field gone."""
    lines = path.read_bytes().decode().splitlines(keepends=True)
    out = []
    for line in lines:
        body = line.rstrip("\r\n")
        out.append(body.rsplit(",", 1)[0] + line[len(body):])
    path.write_bytes("".join(out).encode())
    return path.read_bytes()


def test_one_process_states_its_batch_in_metrics_and_report(trained):
    kd = trained / "digits_tiny" / "kd-seed0"
    metrics = pd.read_csv(kd / "metrics.csv")
    assert list(metrics.columns) == tables.METRICS_COLUMNS and metrics.columns[-1] == "effective_batch"
    assert metrics.effective_batch.tolist() == [BATCH] * 3
    assert tables.read_metrics(kd / "metrics.csv").effective_batch.tolist() == [BATCH] * 3
    ptq = pd.read_csv(trained / "digits_tiny" / "ptq-seed0" / "metrics.csv")
    assert ptq.effective_batch.tolist() == [BATCH]  # its calibration batches
    # the checkpoint's copy of the row leaves it out: checkpoints are what they were before
    ckpt = load_checkpoint(kd / "epoch_0003.pt")
    assert "effective_batch" not in ckpt["metrics"] and "seconds" not in ckpt["metrics"]
    assert set(ckpt["metrics"]) == set(tables.METRICS_COLUMNS) - {"effective_batch", "seconds"}
    text = report(trained / "digits_tiny")
    assert f"| kd | 0 | {metrics.test_acc.max():.2f} ({metrics.test_acc.idxmax() + 1}) | " \
           f"{metrics.test_acc.iloc[-1]:.2f} (3) | {BATCH} |" in text
    assert "| run | best test acc. (%) | final test acc. (%) | seeds | effective batch |" in text


def test_a_legacy_metrics_csv_is_accepted_and_upgraded_only_when_the_run_is_extended(trained, recipe,
                                                                                   tmp_path):
    shutil.copytree(trained, tmp_path / "ck")
    kd = tmp_path / "ck" / "digits_tiny" / "kd-seed0"
    old = _legacy(kd / "metrics.csv")
    assert old.decode().splitlines()[0].split(",") == tables.LEGACY_METRICS_COLUMNS
    df = tables.read_metrics(kd / "metrics.csv")  # accepted; the missing column reads as NaN
    assert list(df.columns) == tables.METRICS_COLUMNS and df.effective_batch.isna().all()
    assert df.epoch.tolist() == [1, 2, 3]
    assert accuracies(kd).effective_batch.tolist() == [BATCH]  # from config.json instead
    # a finished run with a legacy log: nothing trained, nothing rewritten
    train_recipe(recipe, runs=["kd"], out=tmp_path / "ck", device="cpu", progress=False,
                 step_hook=lambda *a: pytest.fail("a finished run trained again"))
    assert (kd / "metrics.csv").read_bytes() == old
    # rows of two layouts never share a file
    row = dict(pd.read_csv(trained / "digits_tiny" / "kd-seed0" / "metrics.csv").iloc[0])
    with pytest.raises(tables.LogError, match=r"kd-seed0/metrics.csv has the columns .*'seconds'\], but the "
                                              r"rows to append have .*'effective_batch'\]"):
        tables.append_rows(kd / "metrics.csv", [row], tables.METRICS_COLUMNS)
    assert (kd / "metrics.csv").read_bytes() == old
    # extended by one epoch: the old rows keep their bytes and gain the column, the new row has it
    train_recipe(recipe, runs=["kd"], epochs=4, out=tmp_path / "ck", device="cpu", progress=False)
    new = (kd / "metrics.csv").read_bytes().decode().splitlines()
    assert new[0].split(",") == tables.METRICS_COLUMNS
    assert [line.rsplit(",", 1)[0] for line in new[:4]] == old.decode().splitlines()
    assert tables.read_metrics(kd / "metrics.csv").effective_batch.tolist() == [BATCH] * 4


def _train_on_ranks(rank, world, recipe, out):
    train_recipe(recipe, runs=["kd"], out=out, device="cpu", progress=False)


def test_two_ranks_state_twice_the_batch(recipe, trained, tmp_path):
    out = tmp_path / "ck"
    shutil.copytree(trained / "teachers", out / "teachers")
    run_ranks(_train_on_ranks, 2, recipe, out)
    kd = out / "digits_tiny" / "kd-seed0"
    config = json.loads((kd / "config.json").read_text())
    assert config["distributed"]["effective_batch"] == 2 * BATCH
    assert tables.read_metrics(kd / "metrics.csv").effective_batch.tolist() == [2 * BATCH] * 3
    assert accuracies(kd).effective_batch.tolist() == [2 * BATCH]
    assert report(kd).splitlines()[-1].endswith(f"| {2 * BATCH} |")


@pytest.mark.parametrize("junk", ["-5", "0", "7.9"])
def test_a_junk_effective_batch_is_refused_not_reported(trained, tmp_path, junk):
    """An edited log or config.json must not put a wrong batch into the report."""
    from landscape.errors import LandscapeError
    from landscape.zsq.parallel import effective_batch

    path = tmp_path / "metrics.csv"
    lines = (trained / "digits_tiny" / "kd-seed0" / "metrics.csv").read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + "," + junk
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(tables.LogError, match=rf"line 2: effective_batch = '?{junk}"):
        tables.read_metrics(path)
    config = {"train": {"batch_size": BATCH}, "distributed": {"effective_batch": float(junk)}}
    with pytest.raises(LandscapeError, match="effective_batch"):
        effective_batch(config)
    assert effective_batch({"train": {"batch_size": BATCH}}) == BATCH
