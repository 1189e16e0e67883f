"""Reproducible kernels: the same bits from the same recipe and seed on any x86-64 CPU with AVX2.

PyTorch, MKL, oneDNN, OpenBLAS and NumPy each pick their kernels by the CPU's instruction set
(SSE4, AVX2, AVX-512) when they load. Different kernels round differently in the last bit, and
training amplifies a last bit into other accuracies and other verdicts. Every process that
trains or analyses therefore runs, by default, with every library pinned to its AVX2 kernels:

    ATEN_CPU_CAPABILITY=avx2        PyTorch's own vectorised kernels (Sleef maths included)
    MKL_CBWR=AVX2                   MKL's conditional numerical reproducibility, AVX2 branch
    MKL_ENABLE_INSTRUCTIONS=AVX2    (the same limit, so a user's setting cannot contradict it)
    ONEDNN_MAX_CPU_ISA=AVX2         oneDNN's convolutions (DNNL_MAX_CPU_ISA: its old name)
    OPENBLAS_CORETYPE=Haswell       NumPy/SciPy's OpenBLAS (LAPACK of the spectral densities)
    NPY_DISABLE_CPU_FEATURES=X86_V4 AVX512_ICL AVX512_SPR   NumPy's AVX-512 loops (exp, log, ...)

These are read when the libraries load, so they must be in the environment before ``import
torch``: :func:`apply` sets them in ``os.environ`` when neither torch nor NumPy is loaded yet,
and otherwise re-executes the process with them (``os.execve``). The CLI calls it first thing;
worker processes (``spawn``) and ``torchrun`` ranks inherit the environment. The torch thread
count is fixed separately by the recipe's ``threads`` (1).

Why this set and not the portable baseline (``ATEN_CPU_CAPABILITY=default``, ``MKL_CBWR=COMPATIBLE``,
oneDNN off): both gave bit-identical training under every instruction-set variation we could
play on one machine, and the AVX2 set costs 1.2x where the baseline costs 2.5x
(``benchmarks/README.md``). What it covers: x86-64 CPUs with AVX2 and FMA3 (Intel Haswell,
2013, and later; AMD Zen and later), AVX-512 ones included. A CPU without AVX2 cannot run these
kernels: there :func:`current` says ``"machine-dependent"`` and provenance says so.

``reproducible = false`` in a recipe or ``--fast`` on the command line keeps whatever the
libraries pick (faster on AVX-512), and provenance then says the numbers are machine-dependent.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from typing import Mapping, Sequence

from landscape.errors import UnknownNameError

__all__ = ["PINNED", "REPRODUCIBLE", "FAST", "pinned_env", "apply", "current", "cpu_model", "cpu_isa",
           "describe"]

REPRODUCIBLE, FAST = "reproducible", "fast"
#: the environment of the reproducible mode (read by the libraries when they load)
PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}
#: marks a process (and its children) as started in a given mode by :func:`apply`
ENV_MODE = "LANDSCAPE_KERNELS"


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> dict[str, str]:
    """The first value of each field of ``/proc/cpuinfo`` (``{}`` where there is none), read once
    per process: :func:`describe` asks for the flags twice and the model once."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    out.setdefault(key.strip(), value.strip())
    except OSError:  # pragma: no cover - not Linux
        pass
    return out


def _cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest vector instruction set the CPU reports: ``AVX-512``, ``AVX2``, ``SSE4.2``, or the
    machine name on other architectures."""
    flags = _cpu_flags()
    if not flags:
        return platform.machine()
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags and "fma" in flags:
        return "AVX2"
    return "SSE4.2" if "sse4_2" in flags else "SSE2"


def _supported() -> bool:
    """Whether this CPU can run the pinned AVX2 kernels."""
    return platform.machine() in ("x86_64", "AMD64") and cpu_isa() in ("AVX2", "AVX-512")


def pinned_env(env: Mapping[str, str], mode: str) -> dict[str, str]:
    """``env`` with the variables of ``mode`` set (``PINNED`` and the marker for reproducible;
    only the marker for fast, the user's own settings kept)."""
    out = dict(env)
    if mode == REPRODUCIBLE and _supported():
        out.update(PINNED)
    elif mode == FAST and env.get(ENV_MODE) == REPRODUCIBLE:  # inherited from a reproducible parent
        for k, v in PINNED.items():
            if out.get(k) == v:
                del out[k]
    out[ENV_MODE] = mode
    return out


def apply(mode: str, argv: Sequence[str] | None = None) -> None:
    """Put this process in ``mode`` (``"reproducible"`` or ``"fast"``) before torch loads.

    Sets the environment in place when neither torch nor NumPy is imported yet; otherwise
    re-executes ``python -m landscape ARGV`` with it (never returns then). ``argv``: the
    command line to re-execute (default ``sys.argv[1:]``).
    """
    if mode not in (REPRODUCIBLE, FAST):
        raise UnknownNameError(f"kernel mode {mode!r}: expected {REPRODUCIBLE!r} or {FAST!r}")
    env = pinned_env(os.environ, mode)
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    if "torch" not in sys.modules and "numpy" not in sys.modules:
        os.environ.update(env)
        return
    args = list(sys.argv[1:] if argv is None else argv)  # pragma: no cover - exercised by the CLI tests
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "landscape", *args], env)


def current() -> str:
    """The mode this process's numbers were computed in: ``"reproducible"`` when every pinned
    variable is in the environment and PyTorch runs its AVX2 kernels, else
    ``"machine-dependent"`` (the fast mode, a library call that did not go through the CLI, or
    a CPU without AVX2)."""
    if not _supported() or any(os.environ.get(k) != v for k, v in PINNED.items()):
        return "machine-dependent"
    import torch

    return REPRODUCIBLE if torch.backends.cpu.get_cpu_capability() == "AVX2" else "machine-dependent"


def describe() -> dict[str, str]:
    """Provenance of the numbers: mode, CPU model and instruction set, PyTorch's kernels."""
    import torch

    mode = current()
    kernels = torch.backends.cpu.get_cpu_capability()
    text = ("bit for bit on any x86-64 CPU with AVX2 (locked versions)" if mode == REPRODUCIBLE
            else "machine-dependent in the last bits")
    return {"kernels": f"{mode} ({text}; torch CPU capability {kernels})",
            "cpu": f"{cpu_model()} ({cpu_isa()})"}
