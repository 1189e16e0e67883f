"""The GDFQ generator's shapes and the BNS loss from forward hooks."""

import pytest
import torch
from torch import nn

from landscape.models import SmallCNN
from landscape.zsq.generator import BNStatsLoss, Generator


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
def test_generator_sized_for_the_data(channels, size):
    g = Generator(10, channels, size, latent_dim=16, width=8)
    x, y = g.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, channels, size, size) and y.shape == (4,)
    assert Generator(**g.spec()).spec() == g.spec()


def test_generator_rejects_sizes_it_cannot_make():
    with pytest.raises(ValueError, match="img_size=30"):
        Generator(10, 3, 30)


def test_bns_is_zero_when_batch_statistics_equal_running_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).eval()
    x = torch.randn(16, 3, 5, 5) * 2 + 1
    with torch.no_grad():
        bn.running_mean.copy_(x.mean((0, 2, 3)))
        bn.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    with BNStatsLoss(nn.Sequential(bn)) as bns:
        bn(x)
        assert bns.loss().item() == pytest.approx(0.0, abs=1e-10)
        bn(x + 1)  # mean off by one in each of 3 channels: MSE(mean) = 1
        assert bns.loss().item() == pytest.approx(1.0, abs=1e-5)


def test_bns_averages_over_the_teachers_bn_layers_and_has_gradients():
    teacher = SmallCNN(1, 10, 4).eval()
    bns = BNStatsLoss(teacher)
    assert len(bns.layers) == 3
    g = Generator(10, 1, 8, latent_dim=8, width=8)
    x, y = g.sample(8)
    teacher(x)
    loss = bns.loss()
    loss.backward()
    assert loss.item() > 0 and g.l1.weight.grad is not None
    bns.remove()
    teacher(x)
    with pytest.raises(RuntimeError, match="before any forward"):
        bns.loss()


def test_bns_needs_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm"):
        BNStatsLoss(nn.Linear(3, 3))
