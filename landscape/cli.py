"""The ``landscape`` command line: train, analyze, plot, figures, report, compare.

    landscape train RECIPE [--runs NAME ...] [--epochs N] [--out DIR] [--seed S] [--threads T] [--nproc N]
    landscape analyze RUN_DIR... [--analyses NAME ...] [--settings FILE] [--force] [--keep-going] [--nproc N [--data-parallel]]
    landscape plot [--tables DIR] [--out DIR]
    landscape figures [RECIPE] [--seeds S ...] [--jobs N] [--checkpoints DIR] [--publish README] [--nproc N]
    landscape report RUN_OR_RECIPE_DIR...
    landscape compare [RECIPE] [--seeds S ...] [--jobs N] [--checkpoints DIR] [--out DIR] [--publish README]

``--nproc N`` runs the command as N processes on this machine: it relaunches itself through
``torchrun`` (``python -m torch.distributed.run --standalone``); under torchrun (``RANK`` and
``WORLD_SIZE`` set, e.g. ``torchrun --nnodes 2 --nproc-per-node 8 ... -m landscape train R``)
the process group is joined as it is. See docs/distributed.md.

Each sub-command is a thin shell over one library function, so everything the CLI does can
be done from Python too. A bad input (a missing file, a recipe typo, a corrupt checkpoint)
ends with one line naming the problem; ``--debug`` (anywhere on the line) shows the full
traceback instead.

Exit codes: 0 done; 1 a bug in landscape (its traceback and a line asking for a report);
2 bad input (nothing or only part was done, the line says what);
3 the analysis is incomplete (a checkpoint or an analysis was skipped, or a table came out
empty; the summary lists each; ``--keep-going`` makes this 0); 4 another process holds the
run folder; 130 interrupted (completed epochs are saved; a rerun resumes).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Sequence

from landscape.errors import LandscapeError, LockError
from landscape.launch_guard import check_nproc, die_with_parent

EXIT_OK, EXIT_BUG, EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_BUSY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
#: The line under the traceback of an exception that is not a LandscapeError (exit 1).
BUG_REPORT = ("this is a bug in landscape, not a problem with your input; please report it in the project's "
              "issue tracker with the traceback above and the command line")
_DEBUG_HINT = "(rerun with --debug for the traceback)"
COMMANDS = ("train", "analyze", "plot", "figures", "report", "compare")


class _Incomplete(Exception):
    """Some checkpoints or analyses were skipped (exit code 3)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("landscape")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _problems(tables, keep_going: bool) -> None:
    from landscape.distributed import is_main

    problems = getattr(tables, "problems", [])
    if not problems:
        return
    if is_main():
        print(f"{len(problems)} thing(s) could not be analysed:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
    if not keep_going:  # every rank holds the same problems: the same exit everywhere
        raise _Incomplete(f"{len(problems)} checkpoint(s)/analyses skipped (listed above); fix them or rerun "
                          "with --keep-going to accept partial tables")


# ----------------------------------------------------------------------------- commands


def _out(text) -> None:
    """Print on rank 0 only (every rank of a --nproc run holds the same result)."""
    from landscape.distributed import is_main

    if is_main():
        print(text)


def _train(args: argparse.Namespace) -> None:
    from landscape.zsq.runs import train_recipe

    kwargs = {"threads": args.threads} if args.threads is not None else {}
    run_dirs = train_recipe(args.recipe, runs=args.runs, epochs=args.epochs, out=args.out, seed=args.seed,
                            data_root=args.data_root, device=args.device, **kwargs)
    for run_dir in run_dirs:
        _out(run_dir)


def _load_settings(path: str | None) -> dict | None:
    """An ``[analysis]`` table from a TOML file: a recipe (its ``[analysis]``) or a settings file."""
    if path is None:
        return None
    import tomllib

    from landscape.analyzers import AnalysisError

    p = Path(path)
    if not p.is_file():
        raise AnalysisError(f"settings file {p} does not exist; give a TOML file with an [analysis] table "
                            "(a recipe works)")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"settings file {p} is not valid TOML: {exc}") from None
    return raw.get("analysis", raw)


def _analyze(args: argparse.Namespace) -> None:
    from landscape.analyzers import analyze_runs
    from landscape.analyzers.distributed import ENV_MODE

    if args.data_parallel:  # under --nproc: every checkpoint on all ranks, its batches shared out
        os.environ[ENV_MODE] = "data"

    tables = analyze_runs(args.run_dirs, analyses=args.analyses, force=args.force, settings=_load_settings(args.settings),
                          out_dir=args.out, device=args.device, threads=args.threads)
    for name, table in tables.items():
        _out(f"{name}: {len(table)} rows -> {Path(args.out) / (name + '.csv')}")
    _out(f"{tables.computed} result(s) computed, the others read from the cache")
    _problems(tables, args.keep_going)


def _plot(args: argparse.Namespace) -> None:
    from landscape.figures import plot_all

    for path in plot_all(tables_dir=args.tables, out_dir=args.out):
        print(path)


def _figures(args: argparse.Namespace) -> None:
    from landscape.distributed import is_main, world_size
    from landscape.pipeline import run_figures

    jobs = 1 if world_size() > 1 else args.jobs  # with --nproc the ranks share each job instead
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(sys.stdout if is_main() else quiet):
        tables = run_figures(recipe=args.recipe, data_root=args.data_root, device=args.device, force=args.force,
                             out=args.out, seeds=args.seeds, jobs=jobs, checkpoints=args.checkpoints,
                             publish=args.publish)
    _problems(tables, args.keep_going)


def _report(args: argparse.Namespace) -> None:
    from landscape.zsq.report import report

    print(report(args.dirs))


def _compare(args: argparse.Namespace) -> None:
    from landscape.compare import run_compare

    run_compare(args.recipe, out=args.out, checkpoints=args.checkpoints, seeds=args.seeds, jobs=args.jobs,
                publish=args.publish, data_root=args.data_root, device=args.device)


# ----------------------------------------------------------------------------- parser


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option says its default (unless its help already does); descriptions keep their breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``landscape`` console script."""
    parser = argparse.ArgumentParser(prog="landscape", formatter_class=_Help,
                                     description="Loss-landscape analysis for quantized neural networks.",
                                     epilog="Exit codes:" + __doc__.split("Exit codes:", 1)[1])
    parser.add_argument("--version", action="version", version=f"landscape {_version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
        p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        p.add_argument("--fast", action="store_true",
                       help="let torch, MKL, oneDNN and NumPy pick their kernels by CPU (faster on AVX-512; the "
                            "numbers then depend on the machine; default: pinned AVX2 kernels, landscape.kernels)")
        return p

    def processes(p) -> None:
        """--device, --nproc and --oversubscribe: the options of a command that can run as N processes."""
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
        p.add_argument("--nproc", type=int, default=None, metavar="N",
                       help="processes on this machine (relaunches through torchrun; default: 1, or torchrun's)")
        p.add_argument("--oversubscribe", action="store_true",
                       help="allow --nproc above the usable cores or the memory for that many workers")

    p = command("train", "train the runs of a recipe, writing a checkpoint every epoch (resumes when rerun)")
    p.add_argument("recipe", help="a recipe TOML, e.g. analyses/default.toml")
    p.add_argument("--runs", nargs="+", metavar="NAME", help="runs to train (default: every run of the recipe)")
    p.add_argument("--epochs", type=int, help="override every run's number of epochs (default: the recipe's)")
    p.add_argument("--out", default=None, help="checkpoint root (default: checkpoints/)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's seed)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the recipe's threads); the numbers depend on it")
    p.add_argument("--data-root", default=None, help="folder holding the data (CIFAR, Fashion-MNIST; default: the recipe's [data] root, else Fashion-MNIST's Debian folder; mnist5k and digits need none)")
    processes(p)
    p.set_defaults(func=_train)

    p = command("analyze", "run the loss-landscape analyses over run folders into tidy CSV tables")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, e.g. checkpoints/default/kd-seed0")
    p.add_argument("--analyses", nargs="+", metavar="NAME",
                   help="any of cosine trace eigen density interepoch crossings (default: all)")
    p.add_argument("--settings", metavar="FILE", default=None,
                   help="a TOML file with an [analysis] table, e.g. a recipe (default: built-in settings)")
    p.add_argument("--force", action="store_true", help="recompute results the cache already holds")
    p.add_argument("--keep-going", action="store_true",
                   help="exit 0 even when checkpoints or analyses were skipped (they are still listed)")
    p.add_argument("--out", default="figures/tables", help="where the tidy CSV tables go")
    p.add_argument("--threads", type=int, default=1, help="torch threads; the numbers depend on it")
    processes(p)
    p.add_argument("--data-parallel", action="store_true",
                   help="with several processes: analyse every checkpoint on all of them, its batches shared "
                        "out (default: each checkpoint on one process)")
    p.set_defaults(func=_analyze)

    p = command("plot", "redraw every figure from the tables (no recomputation)")
    p.add_argument("--tables", default="figures/tables", help="folder of the tidy CSV tables")
    p.add_argument("--out", default="figures", help="where the figures go")
    p.set_defaults(func=_plot)

    p = command("figures", "train or reuse, analyze, draw and judge the paper's claims: the whole job")
    p.add_argument("recipe", nargs="?", default="analyses/default.toml", help="a recipe TOML (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to train (default: the recipe's seeds)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes (default: the usable cores); changes the time, never the numbers")
    p.add_argument("--checkpoints", default=None, metavar="DIR", help="checkpoint root (default: checkpoints/)")
    p.add_argument("--out", default="figures", help="where figures, tables and README.md go")
    p.add_argument("--publish", metavar="README", default=None,
                   help="also copy the results blocks into this Markdown file (and docs/results.md; default: publish nowhere)")
    p.add_argument("--keep-going", action="store_true", help="exit 0 even when something could not be analysed")
    p.add_argument("--force", action="store_true", help="recompute cached analyses")
    p.add_argument("--data-root", default=None, help="folder holding the data (CIFAR, Fashion-MNIST; default: the recipe's [data] root, else Fashion-MNIST's Debian folder; mnist5k and digits need none)")
    processes(p)
    p.set_defaults(func=_figures)

    p = command("report", "best and final test accuracy of run folders (mean ± std over seeds, and per seed)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders or a recipe folder (checkpoints/<recipe>)")
    p.set_defaults(func=_report)

    p = command("compare", "quantizers × bit widths × layers: curvature, per-layer damage (measured and "
                           "predicted), mixed precision, findings")
    p.add_argument("recipe", nargs="?", default="analyses/compare.toml", help="a recipe TOML with a [compare] table "
                   "(default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the [compare] or recipe seeds)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes (default: the usable cores); never changes the numbers")
    p.add_argument("--checkpoints", default=None, metavar="DIR", help="teacher cache root (default: checkpoints/)")
    p.add_argument("--out", default=None, help="where tables, figures, README.md and results.md go (default "
                   "figures/compare; a language-model recipe: figures/compare/<recipe name>)")
    p.add_argument("--publish", metavar="README", default=None,
                   help="also copy the compare:* results blocks into this Markdown file (and docs/results.md; default: publish nowhere)")
    p.add_argument("--data-root", default=None, help="folder holding the data (default: the recipe's [data] root; mnist5k and digits need none)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.set_defaults(func=_compare)
    return parser


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` may stand anywhere on the line: take it out before parsing."""
    return [a for a in argv if a != "--debug"], "--debug" in argv


def _unknown_command(argv: list[str]) -> str | None:
    """The first positional word if it is not a command, with the closest command suggested."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] in COMMANDS:
        return None
    match = difflib.get_close_matches(words[0], COMMANDS, n=1, cutoff=0.5)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return f"unknown command '{words[0]}'{hint} (commands: {', '.join(COMMANDS)}; see landscape --help)"


def _kernel_mode(args: argparse.Namespace) -> str:
    """``fast`` with ``--fast`` or a recipe saying ``reproducible = false``; else ``reproducible``.
    Read before torch loads, so a recipe that cannot be read is left for the command to report."""
    import tomllib

    from landscape.kernels import FAST, REPRODUCIBLE

    if getattr(args, "fast", False):
        return FAST
    recipe = getattr(args, "recipe", None)
    if isinstance(recipe, str):
        try:
            if tomllib.loads(Path(recipe).read_text(encoding="utf-8")).get("reproducible") is False:
                return FAST
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            pass
    return REPRODUCIBLE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status.

    From the command line (``argv`` None) the process first puts itself in the kernel mode of
    :mod:`landscape.kernels` (re-executing itself if torch were already loaded); a call from
    Python with an ``argv`` keeps the caller's kernels."""
    from_command_line = argv is None
    raw = list(sys.argv[1:] if argv is None else argv)
    argv, debug = _split_debug(raw)
    if not any(a in ("-h", "--help", "--version") for a in argv):
        bad = _unknown_command(argv)
        if bad:
            print(f"landscape: {bad}", file=sys.stderr)
            return EXIT_BAD_INPUT
    args = build_parser().parse_args(argv)
    args.debug = debug
    if from_command_line:
        from landscape import kernels

        kernels.apply(_kernel_mode(args), raw)
    from landscape import distributed

    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        print(f"landscape: --nproc {nproc}: expected a number of processes >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not distributed.launched():
        if nproc and nproc > 1:  # become N processes: torchrun runs this same command line in each
            try:
                check_nproc(nproc, getattr(args, "oversubscribe", False))
            except LandscapeError as exc:
                print(f"landscape: {type(exc).__name__}: {exc}", file=sys.stderr)
                return EXIT_BAD_INPUT
            return distributed.launch(_without_nproc(argv) + (["--debug"] if debug else []), nproc)
        return _execute(args, debug)[0]
    return _execute_rank(args, debug, nproc)


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line without ``--nproc N`` (torchrun would read it as its own --nproc-per-node;
    under torchrun the ranks see WORLD_SIZE instead)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _execute_rank(args: argparse.Namespace, debug: bool, nproc: int | None) -> int:
    """One rank under torchrun: join the group, run the command, leave the exit code for the
    launcher. A failure every rank shares (rank 0 found it and told the others) exits 0 towards
    torchrun, so that it stays quiet; the launcher returns the real code."""
    from landscape import distributed

    die_with_parent()  # a worker ends with the torchrun that started it, however that ends
    try:
        ctx = distributed.init(device=getattr(args, "device", None))
        if nproc is not None and nproc != ctx.local_world_size:
            raise distributed.DistributedError(
                f"--nproc {nproc} but torchrun started {ctx.local_world_size} process(es) per node; "
                "give the same number, or leave --nproc out under torchrun")
    except LandscapeError as exc:
        print(f"landscape: {type(exc).__name__}: {exc}", file=sys.stderr)
        distributed.write_exit_code(EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    try:
        if args.command in ("plot", "report") and not ctx.is_main:
            code, shared = EXIT_OK, True  # nothing to share out: rank 0 does it
        else:
            code, shared = _execute(args, debug)
    finally:
        distributed.shutdown()
    distributed.write_exit_code(code)
    return 0 if shared and os.environ.get(distributed.ENV_EXIT_DIR) else code


def _check_device(device: str | None) -> None:
    """``--device``: one torch knows and this machine has, else one :class:`DeviceError` line
    before any work (not a failure deep inside the first tensor moved there)."""
    if device is None:
        return
    import torch

    from landscape.errors import DeviceError

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"--device {device!r} is not a device torch knows; use cpu or cuda (cuda:N)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: CUDA is not available on this machine; use --device cpu")


def _execute(args: argparse.Namespace, debug: bool) -> tuple[int, bool]:
    """Run the command; ``(exit code, whether every rank ended the same way)``.

    A :class:`~landscape.errors.LandscapeError` is the user's to fix: one line, exit 2 (4 for a
    held lock). An ``OSError`` on a file becomes the documented ``StorageError`` line (exit 2).
    Anything else is a bug in landscape: its traceback and a line asking for a report, exit 1.
    ``--debug`` re-raises every one of them. Under torchrun each rank returns its code (a
    buggy rank's exit makes torchrun stop the others, so none waits for it)."""
    from landscape.distributed import agreed

    try:
        _check_device(getattr(args, "device", None))
        args.func(args)
    except KeyboardInterrupt:
        _error("landscape: interrupted; completed epochs are saved and a rerun resumes.", None)
        return EXIT_INTERRUPTED, False
    except _Incomplete as exc:
        _error(f"landscape: {exc}", exc, shared=True)
        return EXIT_INCOMPLETE, True
    except LandscapeError as exc:
        if debug:
            raise
        _error(f"landscape: {type(exc).__name__}: {exc}\n{_DEBUG_HINT}", exc)
        return (EXIT_BUSY if isinstance(exc, LockError) else EXIT_BAD_INPUT), agreed(exc)
    except OSError as exc:  # the OS refused a file (read-only, full, missing): the user's to fix
        if debug:
            raise
        from landscape.errors import storage_error

        # a write that names no file (pandas' to_csv) was a write under --out
        message = storage_error(exc, getattr(exc, "filename", None) or getattr(args, "out", None))
        _error(f"landscape: {type(message).__name__}: {message}\n{_DEBUG_HINT}", exc)
        return EXIT_BAD_INPUT, agreed(exc)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug in landscape, shown as one
        if debug:
            raise
        trace = "".join(traceback.format_exception(exc)).rstrip()
        _error(f"{trace}\nlandscape: {BUG_REPORT}", exc)
        return EXIT_BUG, agreed(exc)
    return EXIT_OK, True


def _error(text: str, exc: BaseException | None, shared: bool = False) -> None:
    """An error line on stderr: rank 0 prints it; another rank only when the error is its own."""
    from landscape.distributed import agreed, current

    rank = current().rank
    if rank == 0:
        print(text, file=sys.stderr)
    elif not (shared or (exc is not None and agreed(exc))):  # each of this rank's own lines says so
        print(re.sub(r"(?m)^landscape:", f"landscape[rank {rank}]:", text), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
