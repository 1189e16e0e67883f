"""GDFQ's conditional generator and its BN-statistics (BNS) loss.

Generator (Xu et al., GDFQ, ECCV 2020), sized for the data: for an S x S image with C
channels, the label embedding multiplies the noise, a linear layer maps it to
``width x S/4 x S/4``, then BN, up x2, conv(width)-BN-LeakyReLU(0.2), up x2,
conv(width/2)-BN-LeakyReLU(0.2), conv(C), Tanh, BN(affine=False).

Generator loss: ``CE(teacher(G(z, y)), y) + bns_scale * BNS`` with
``BNS = mean over the teacher's BN layers of MSE(batch mean, running_mean) +
MSE(batch var, running_var)``; the batch statistics are taken by forward hooks on the
teacher's BatchNorm layers from their inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Generator(nn.Module):
    def __init__(self, num_classes: int, channels: int, img_size: int, latent_dim: int = 100,
                 width: int = 128):
        super().__init__()
        if img_size % 4:
            raise ValueError(f"img_size={img_size}: the GDFQ generator needs a multiple of 4")
        self.num_classes, self.channels, self.img_size = num_classes, channels, img_size
        self.latent_dim, self.width = latent_dim, width
        self.init_size = img_size // 4
        self.label_emb = nn.Embedding(num_classes, latent_dim)
        self.l1 = nn.Linear(latent_dim, width * self.init_size ** 2)
        self.bn0 = nn.BatchNorm2d(width)
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width, 0.8),
                                    nn.LeakyReLU(0.2))
        half = max(width // 2, 1)
        self.block2 = nn.Sequential(nn.Conv2d(width, half, 3, 1, 1), nn.BatchNorm2d(half, 0.8),
                                    nn.LeakyReLU(0.2), nn.Conv2d(half, channels, 3, 1, 1),
                                    nn.Tanh(), nn.BatchNorm2d(channels, affine=False))

    def spec(self) -> dict:
        return {"num_classes": self.num_classes, "channels": self.channels,
                "img_size": self.img_size, "latent_dim": self.latent_dim, "width": self.width}

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.l1(self.label_emb(y) * z)
        h = self.bn0(h.view(-1, self.width, self.init_size, self.init_size))
        h = self.block1(F.interpolate(h, scale_factor=2))
        return self.block2(F.interpolate(h, scale_factor=2))

    def draw(self, n: int, generator: torch.Generator | None = None):
        """``(z, y)`` for n samples, drawn on the CPU from ``generator`` (so CPU and CUDA runs draw
        the same) and moved to the generator's device."""
        device = self.l1.weight.device
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        y = torch.randint(0, self.num_classes, (n,), generator=generator).to(device)
        return z, y

    def sample(self, n: int, generator: torch.Generator | None = None):
        """``(G(z, y), y)`` for n samples drawn by :meth:`draw`."""
        z, y = self.draw(n, generator)
        return self(z, y), y


class BNStatsLoss:
    """Forward hooks on every BatchNorm of ``model`` recording its input's batch statistics.

        bns = BNStatsLoss(teacher)
        logits = teacher(x)        # hooks record mean/var of each BN input
        loss = bns.loss()          # mean over BN layers of MSE(mean) + MSE(var)
        bns.remove()

    Variance is the biased batch variance over (N, H, W), as BatchNorm normalises with.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError("BNS loss needs a teacher with BatchNorm layers; this model has none")
        self._stats: list = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module, inputs, output):
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        self._stats.append((module, x.mean(dims), x.var(dims, unbiased=False)))

    def clear(self) -> None:
        self._stats = []

    def loss(self) -> torch.Tensor:
        if not self._stats:
            raise RuntimeError("BNStatsLoss.loss() before any forward pass of the teacher")
        terms = [F.mse_loss(mean, m.running_mean) + F.mse_loss(var, m.running_var)
                 for m, mean, var in self._stats]
        self.clear()
        return torch.stack(terms).mean()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def rebuild_generator(ckpt: dict, device="cpu") -> nn.Module | None:
    """The checkpoint's generator (train mode, as it is used), or None for runs without one.

    Beside the generator, not in :mod:`landscape.checkpoints`: the run folder's format knows
    nothing of the trainer's modules (it stores ``generator_spec`` and ``generator_state``)."""
    if not ckpt.get("generator_spec"):
        return None
    gen = Generator(**ckpt["generator_spec"])
    gen.load_state_dict(ckpt["generator_state"])
    return gen.to(device)
