"""One error hierarchy: what a user can cause is a LandscapeError (exit 2, one line); anything
else is a bug in landscape and looks like one (its traceback, a line asking for a report, exit 1)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import io
import pkgutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import landscape
from distributed_helpers import run_ranks
from landscape import cli
from landscape.errors import LandscapeError

HINT = "(rerun with --debug for the traceback)"

#: Exception classes of the package that are deliberately *not* LandscapeErrors: each is a bug
#: or internal control flow, never the user's to fix.
INTERNAL = {
    # check_dequantization found the built-in quantizer off its own grid: a bug in landscape
    "landscape.quant.errors.QuantizationError",
    # control flow of the CLI: "some analyses were skipped" (exit 3), raised and caught in cli.py
    "landscape.cli._Incomplete",
    # control flow inside eigsh's ARPACK callback; turned into a CurvatureError before it leaves
    "landscape.curvature.lanczos._OutOfProducts",
}


def _package_exceptions() -> dict[str, type]:
    """Every exception class (not warnings) defined in a module of the package."""
    found = {}
    for info in pkgutil.walk_packages(landscape.__path__, "landscape."):
        if info.name.endswith("__main__"):  # running it would run the command line
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # a module of an optional extra (e.g. transformers) not installed
            if (exc.name or "landscape").split(".")[0] == "landscape":
                raise
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (obj.__module__ == info.name and issubclass(obj, BaseException)
                    and not issubclass(obj, Warning)):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_error_class_is_a_landscape_error_unless_listed_as_internal():
    found = _package_exceptions()
    # the walk reaches the classes this hierarchy was built for (it cannot pass by finding nothing)
    for name in ("landscape.curvature.errors.CurvatureError", "landscape.curvature.reduction.ReductionError",
                 "landscape.tables.TableError", "landscape.figures.FigureError",
                 "landscape.quant.errors.FrozenRoundingError", "landscape.quant.errors.CallSiteError",
                 "landscape.schema.RecipeError", *INTERNAL):
        assert name in found, name
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, LandscapeError) and name not in INTERNAL)
    assert outside == [], f"not LandscapeErrors (derive them from it, or list them in INTERNAL with a reason): {outside}"
    assert not any(issubclass(found[name], LandscapeError) for name in INTERNAL)
    # the builtin bases that documented `except ValueError` callers rely on are kept
    assert issubclass(found["landscape.curvature.errors.CurvatureError"], ValueError)
    assert issubclass(found["landscape.tables.TableError"], ValueError)


def _stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _plant(monkeypatch, exc: BaseException) -> None:
    """`landscape report` raises ``exc`` from inside the library function it calls."""
    import landscape.zsq.report

    def broken(dirs):
        raise exc

    monkeypatch.setattr(landscape.zsq.report, "report", broken)


@pytest.mark.parametrize("bug", [KeyError("oops"), ValueError("not an input problem"), RuntimeError("internal")])
def test_a_bug_exits_1_with_its_traceback_and_a_report_line(monkeypatch, capsys, tmp_path, bug):
    _plant(monkeypatch, bug)
    assert cli.main(["report", str(tmp_path)]) == 1
    err = _stderr_lines(capsys)
    assert err[0] == "Traceback (most recent call last):", err
    assert f"{type(bug).__name__}: {bug}" in err[-2], err  # the exception's own last line, as Python prints it
    assert err[-1] == f"landscape: {cli.BUG_REPORT}", err
    assert "report" in cli.BUG_REPORT and "bug" in cli.BUG_REPORT
    assert HINT not in err and not any("bad input" in line for line in err)


def test_debug_re_raises_a_bug(monkeypatch, tmp_path):
    _plant(monkeypatch, KeyError("oops"))
    with pytest.raises(KeyError, match="oops"):
        cli.main(["report", str(tmp_path), "--debug"])


def test_an_os_error_on_a_file_is_the_documented_storage_error_line(monkeypatch, capsys, tmp_path):
    target = tmp_path / "ro" / "x.csv"
    _plant(monkeypatch, OSError(errno.EROFS, "Read-only file system", str(target)))
    assert cli.main(["report", str(tmp_path)]) == 2
    assert _stderr_lines(capsys) == [f"landscape: StorageError: cannot write {target} (Read-only file system); the "
                                     "folder is read-only for this user: pass --out to a writable folder (or fix its "
                                     "permissions)", HINT]
    _plant(monkeypatch, FileNotFoundError(errno.ENOENT, "No such file or directory", str(target)))
    assert cli.main(["report", str(tmp_path)]) == 2
    assert _stderr_lines(capsys)[0] == (f"landscape: StorageError: cannot open {target} (No such file or directory); "
                                        "check the path (and that its folder exists), then re-run")


def test_documented_bad_inputs_exit_2_with_one_line(capsys, tmp_path):
    """One line each, ``landscape: <ErrorClass>: <message>`` and the --debug hint, nothing else."""
    tables = tmp_path / "tables"
    tables.mkdir()
    cases = [
        (["train", str(tmp_path / "none.toml")], "RecipeError", "none.toml"),
        (["analyze", str(tmp_path / "no-run")], "AnalysisError", "no-run"),
        (["report", str(tables)], "ReportError", "no metrics.csv in"),
        (["plot", "--tables", str(tables), "--out", str(tmp_path / "o")], "FigureError", "no tables in"),
    ]
    for argv, cls, text in cases:
        assert cli.main(argv) == 2, argv
        err = _stderr_lines(capsys)
        assert len(err) == 2 and err[1] == HINT, err
        assert err[0].startswith(f"landscape: {cls}: ") and text in err[0], err
    # a table that is there but not a CSV: TableError (a ValueError until 0.3, a LandscapeError now)
    (tables / "trace.csv").write_bytes(b"\xff\xfe\x00 not text\n")
    assert cli.main(["plot", "--tables", str(tables), "--out", str(tmp_path / "o")]) == 2
    err = _stderr_lines(capsys)
    assert err == [f"landscape: TableError: table {tables / 'trace.csv'} is not a readable CSV (UnicodeDecodeError); "
                   "rerun `landscape analyze` (or `make figures`) to rewrite it", HINT]
    # a CSV without the tidy columns: named before a figure or a claim hits a KeyError (a bug's exit 1)
    (tables / "trace.csv").write_text("a,b\n1,2\n")
    assert cli.main(["plot", "--tables", str(tables), "--out", str(tmp_path / "o")]) == 2
    assert _stderr_lines(capsys) == [f"landscape: TableError: table {tables / 'trace.csv'} has no column(s) run, seed, "
                                     "epoch, metric, value, loss, layer (is it a landscape table?); rerun `landscape "
                                     "analyze` (or `make figures`) to rewrite it", HINT]


# ----------------------------------------------------------------------------- under torchrun


def _ranks(rank: int, world: int, out: str) -> None:
    """Two ranks: (1) a bug inside on_main (rank 0 alone runs it; every rank raises it): exit 1
    everywhere, the traceback printed once; (2) a bug on rank 1 alone while rank 0 waits in a
    gather: rank 1 exits 1 with its own traceback, rank 0 is released with one line, no hang."""
    from landscape import distributed

    def on_main_bug(args):
        distributed.on_main(lambda: {}["missing"])

    def rank1_bug(args):
        if rank == 1:
            raise KeyError("only on rank 1")
        distributed.all_gather_objects("waiting")

    results = []
    for func in (on_main_bug, rank1_bug):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code, shared = cli._execute(SimpleNamespace(func=func, out=None), debug=False)
        results.append((code, shared, err.getvalue()))
    Path(out, f"rank{rank}.txt").write_text(repr(results))


def test_a_bug_under_torchrun_exits_1_and_releases_the_other_ranks(tmp_path):
    run_ranks(_ranks, 2, str(tmp_path), timeout=20.0, deadline=120.0)
    r0, r1 = (eval((tmp_path / f"rank{r}.txt").read_text()) for r in (0, 1))  # noqa: S307 - our own repr
    # (1) raised on every rank: rank 0 prints the traceback and the report line, rank 1 stays quiet
    assert r0[0][:2] == (1, True) and r1[0][:2] == (1, True)
    assert "Traceback" in r0[0][2] and "KeyError: 'missing'" in r0[0][2]
    assert r0[0][2].rstrip().endswith(f"landscape: {cli.BUG_REPORT}")
    assert r1[0][2] == ""
    # (2) rank 1's own bug: its traceback and report line, tagged with its rank; exit 1
    assert r1[1][:2] == (1, False)
    assert "KeyError: 'only on rank 1'" in r1[1][2]
    assert r1[1][2].rstrip().endswith(f"landscape[rank 1]: {cli.BUG_REPORT}")
    # rank 0 was waiting for it: released with one line naming what happened (exit 2), not hung
    assert r0[1][0] == 2 and "DistributedError" in r0[1][2] and "Traceback" not in r0[1][2], r0[1]


def _bad_user_inputs():
    """(call, builtin base its callers caught before, words the one line must hold) for public API calls
    with a bad argument: each must be a LandscapeError (exit 2 from the CLI) that keeps that base."""
    import torch
    from torch import nn

    from landscape import data, kernels, losses, models
    from landscape.zsq.gi import InundatedSGD

    teacher, x = nn.Linear(3, 4), torch.zeros(2, 3)
    return [
        (lambda: losses.kl_to_teacher("teacher.pt"), TypeError, "teacher must be an nn.Module, got str"),
        (lambda: losses.distillation(lambda x: x), TypeError, "teacher must be an nn.Module"),
        (lambda: losses.kl_to_teacher(teacher, temperature=0), ValueError, "temperature must be a positive number"),
        (lambda: losses.kl_to_teacher(teacher, reduction="sum"), ValueError, "reduction must be one of"),
        (lambda: losses.distillation(teacher, ce_scale=0, kd_scale=0), ValueError, "both 0"),
        (lambda: losses.cross_entropy()(teacher, {"input_ids": x}), TypeError, "causal_lm()"),
        (lambda: losses.cross_entropy()(teacher, (x,)), TypeError, "cross_entropy needs labels"),
        (lambda: losses.kl_divergence(x, torch.zeros(2, 5)), ValueError, "differ in shape"),
        (lambda: models.model_spec("vgg16", 1, 10), ValueError, "unknown model 'vgg16'; choose smallcnn"),
        (lambda: data.load_dataset("imagenet"), ValueError, "unknown data set 'imagenet'"),
        (lambda: kernels.apply("turbo"), ValueError, "kernel mode 'turbo'"),
        (lambda: InundatedSGD([nn.Parameter(x)], lr=-1.0), ValueError, "lr=-1.0"),
        (lambda: InundatedSGD([nn.Parameter(x)], lr=0.1, form="fancy"), ValueError, "form='fancy'"),
    ]


def test_bad_arguments_to_the_public_api_are_landscape_errors_keeping_their_builtin_base():
    for call, base, words in _bad_user_inputs():
        with pytest.raises(LandscapeError) as info:
            call()
        assert isinstance(info.value, base), (words, type(info.value).__mro__)
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
