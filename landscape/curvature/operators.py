"""Helpers for estimators written against *any* symmetric linear operator ``A``.

An operator is anything with ``A.shape == (n, n)`` and ``A @ X`` for a 1-D vector or an
``(n, m)`` block of column vectors: a :class:`~landscape.curvature.Hessian`, a dense
``torch.Tensor``, or a user's own class. ``dtype`` and ``device`` attributes are used when
present (default float64 on the CPU).

Random probes are drawn on the CPU from a seeded ``torch.Generator`` and then moved, so the
same seed gives the same probes on every device.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import CurvatureError

__all__ = ["operator_info", "rademacher", "gaussian", "matmat", "check_method", "check_eigen_args"]


def operator_info(A: Any) -> tuple[int, torch.dtype, torch.device]:
    """``(n, dtype, device)`` of a square operator; raise a clear error for anything else."""
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise CurvatureError(f"operator must have a square 2-D shape, got shape={shape!r}")
    if not hasattr(A, "__matmul__"):
        raise CurvatureError(f"operator of type {type(A).__name__} does not support `@`")
    dtype = getattr(A, "dtype", torch.float64)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.float64
    device = torch.device(getattr(A, "device", "cpu"))
    return int(shape[0]), dtype, device


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def rademacher(n: int, m: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An ``(n, m)`` matrix of independent ±1 entries."""
    z = torch.randint(0, 2, (n, m), generator=gen, dtype=torch.int8)
    return (z.to(dtype) * 2 - 1).to(device)


def gaussian(n: int, m: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An ``(n, m)`` matrix of independent standard normal entries."""
    return torch.randn((n, m), generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def matmat(A: Any, X: torch.Tensor) -> torch.Tensor:
    """``A @ X`` for an ``(n, m)`` block, falling back to column by column if ``A`` only takes vectors."""
    try:
        Y = A @ X
    except (RuntimeError, TypeError):
        Y = torch.stack([A @ X[:, j] for j in range(X.shape[1])], dim=1)
    if Y.shape != X.shape:
        raise CurvatureError(f"operator returned shape {tuple(Y.shape)} for input of shape {tuple(X.shape)}")
    return Y


def check_method(method: str, valid: tuple[str, ...], what: str = "method") -> str:
    if not isinstance(method, str) or method.lower() not in valid:
        raise CurvatureError(f"unknown {what} {method!r}; choose one of {', '.join(map(repr, valid))}")
    return method.lower()


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CurvatureError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_eigen_args(
    A: Any, k: Any, which: Any, tol: Any, max_iter: Any = None, *, default_max_iter: int = 100
) -> tuple[int, torch.dtype, torch.device, str, int]:
    """Validate the arguments shared by every top-k eigensolver.

    Returns ``(n, dtype, device, which, max_iter)`` with ``which`` upper-cased (``"LA"`` or
    ``"LM"``) and ``max_iter`` -- the most products with ``A`` the call may spend -- defaulted.
    ``tol`` is the relative residual ``‖A v − λ v‖/|λ|`` every solver stops at.
    """
    n, dtype, device = operator_info(A)
    check_positive_int(k, "k")
    if k > n:
        raise CurvatureError(f"k={k} is larger than the dimension n={n}")
    which = check_method(which, ("la", "lm"), "which").upper()
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol >= 0):
        raise CurvatureError(f"tol must be a non-negative number (a relative residual), got {tol!r}")
    max_iter = default_max_iter if max_iter is None else check_positive_int(max_iter, "max_iter")
    if max_iter < k:
        raise CurvatureError(f"max_iter={max_iter} is smaller than k={k}: at least one product per eigenpair")
    return n, dtype, device, which, max_iter
