"""The ``landscape`` command line: train, analyze, plot, figures.

    landscape train RECIPE [--runs NAME ...] [--epochs N] [--out DIR] [--seed S]
    landscape analyze RUN_DIR... [--analyses NAME ...] [--force]
    landscape plot [--tables DIR] [--out DIR]
    landscape figures RECIPE [--data-root DIR] [--device cuda]

Each sub-command is a thin shell over one library function, so everything the CLI does can
be done from Python too. A bad input (a missing file, a recipe typo, a corrupt checkpoint)
ends with one line naming the problem; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def _train(args: argparse.Namespace) -> None:
    from landscape.zsq.runs import train_recipe

    run_dirs = train_recipe(
        args.recipe,
        runs=args.runs,
        epochs=args.epochs,
        out=args.out,
        seed=args.seed,
        data_root=args.data_root,
        device=args.device,
    )
    for run_dir in run_dirs:
        print(run_dir)


def _analyze(args: argparse.Namespace) -> None:
    from landscape.analyzers import analyze_runs

    tables = analyze_runs(
        args.run_dirs,
        analyses=args.analyses,
        force=args.force,
        out_dir=args.out,
        device=args.device,
    )
    for name, table in tables.items():
        print(f"{name}: {len(table)} rows -> {Path(args.out) / (name + '.csv')}")


def _plot(args: argparse.Namespace) -> None:
    from landscape.figures import plot_all

    for path in plot_all(tables_dir=args.tables, out_dir=args.out):
        print(path)


def _figures(args: argparse.Namespace) -> None:
    from landscape.pipeline import run_figures

    run_figures(
        recipe=args.recipe,
        data_root=args.data_root,
        device=args.device,
        force=args.force,
        out=args.out,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``landscape`` console script."""
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Loss-landscape analysis for quantized neural networks.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the runs of a recipe, writing a checkpoint every epoch")
    p.add_argument("recipe", help="a recipe TOML, e.g. analyses/default.toml")
    p.add_argument("--runs", nargs="+", metavar="NAME", help="runs to train (default: all in the recipe)")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--out", default=None, help="checkpoint root (default: checkpoints/)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's)")
    p.add_argument("--data-root", default=None, help="folder holding the data (CIFAR, Fashion-MNIST)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_train)

    p = sub.add_parser("analyze", help="run the loss-landscape analyses over run folders")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--analyses", nargs="+", metavar="NAME",
                   help="cosine trace eigen density interepoch crossings (default: all)")
    p.add_argument("--force", action="store_true", help="recompute cached results")
    p.add_argument("--out", default="figures/tables", help="where the tidy CSV tables go")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_analyze)

    p = sub.add_parser("plot", help="redraw every figure from the tables (no recomputation)")
    p.add_argument("--tables", default="figures/tables")
    p.add_argument("--out", default="figures")
    p.set_defaults(func=_plot)

    p = sub.add_parser("figures", help="train or reuse, analyze and draw: the whole job")
    p.add_argument("recipe", nargs="?", default="analyses/default.toml")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--force", action="store_true", help="recompute cached analyses")
    p.add_argument("--out", default="figures")
    p.set_defaults(func=_figures)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("landscape: interrupted; completed epochs are saved and a rerun resumes.", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        if args.debug:
            raise
        name = type(exc).__name__
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"landscape: {name}: {message}\n(rerun with --debug for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
