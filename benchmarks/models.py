"""The benchmark models: the issue's small CNN and a 1,770-parameter MLP (exact Hessian affordable)."""

from __future__ import annotations

import torch
from torch import nn


def small_cnn() -> nn.Module:
    """conv 3→32, max-pool, conv 32→52, max-pool, linear to 10 (49,214 parameters)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 52, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(52 * 8 * 8, 10),
    )


def small_mlp() -> nn.Module:
    """16 → 48 → 16 → 10 with tanh (1,770 parameters)."""
    return nn.Sequential(nn.Linear(16, 48), nn.Tanh(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, 10))


def cnn_problem(batch: int = 256, seed: int = 0):
    torch.manual_seed(seed)
    model = small_cnn().eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return model, x, y


def mlp_problem(n: int = 128, seed: int = 0):
    torch.manual_seed(seed)
    model = small_mlp().double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=g)
    return model, x, y
