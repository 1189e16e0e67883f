"""The accuracy report: best and final test accuracy per run and seed, mean ± std over seeds."""

import math

import pytest

from landscape.zsq import tables
from landscape.zsq.report import ReportError, accuracies, accuracy_table, report


def _run(root, name, seed, accs, teacher=95.0, batch=64):
    d = root / f"{name}-seed{seed}"
    d.mkdir(parents=True)
    best = -1.0
    rows = []
    for e, a in enumerate(accs, start=1):
        best = max(best, a)
        rows.append(tables.metrics_row(e, "train", a, best, teacher, {}, [], 1e-4, 1e-3, 1.0,
                                         effective_batch=batch))
    tables.append_rows(d / "metrics.csv", rows, tables.METRICS_COLUMNS)
    return d


def test_best_and_final_over_seeds(tmp_path):
    _run(tmp_path, "ait", 0, [80.0, 92.0, 90.0])
    _run(tmp_path, "ait", 1, [85.0, 88.0, 89.0])
    _run(tmp_path, "kl", 0, [70.0, 71.0])
    per_seed = accuracies(tmp_path).set_index(["run", "seed"])
    assert per_seed.loc[("ait", 0), ["best_acc", "best_epoch", "final_acc", "epochs"]].tolist() == [92, 2, 90, 3]
    t = accuracy_table(tmp_path)
    assert list(t.index) == ["teacher", "kl", "ait"]
    assert t.loc["ait", "best_mean"] == pytest.approx(90.5)
    assert t.loc["ait", "best_std"] == pytest.approx(math.sqrt(((92 - 90.5) ** 2 + (89 - 90.5) ** 2) / 1))
    assert t.loc["ait", "final_mean"] == pytest.approx(89.5) and t.loc["ait", "n"] == 2
    assert math.isnan(t.loc["kl", "best_std"]) and t.loc["teacher", "best_mean"] == 95.0
    text = report(tmp_path)
    assert "| ait | 90.50 ± 2.12 | 89.50 ± 0.71 | 2 |" in text
    assert "| ait | 0 | 92.00 (2) | 90.00 (3) |" in text
    assert "| kl | 0 | 71.00 (2) | 71.00 (2) |" in text
    # run folders given one by one (as `landscape report DIR...` passes them)
    one = report(tmp_path / "ait-seed0")
    assert "| ait | 0 | 92.00 (2) | 90.00 (3) |" in one and "| ait | 92.00 | 90.00 | 1 |" in one
    two = report([tmp_path / "ait-seed0", str(tmp_path / "ait-seed1"), tmp_path / "ait-seed0"])
    assert "| ait | 90.50 ± 2.12 | 89.50 ± 0.71 | 2 |" in two and "kl" not in two


def test_nothing_to_report_and_junk_logs_name_the_path(tmp_path):
    with pytest.raises(ReportError, match=f"no metrics.csv in {tmp_path}"):
        report(tmp_path)
    d = tmp_path / "kd-seed0"
    d.mkdir()
    (d / "metrics.csv").write_bytes(bytes(range(200, 256)) * 3)
    with pytest.raises(tables.LogError, match=r"kd-seed0/metrics.csv is not a metrics.csv log \(not UTF-8"):
        report(tmp_path)
