"""Teacher architectures: a small BatchNorm CNN for the embedded default and ResNet-20.

Every ReLU is its own ``nn.ReLU`` module (never ``F.relu``), so that
:func:`landscape.quant.quantize_model` can put an activation quantizer after each one, and
every model has BatchNorm, whose running statistics the generator's BNS loss matches.
Models are rebuilt from a plain ``spec`` dict (``build_model(spec)``), which checkpoints hold.
"""

from __future__ import annotations

import torch
from torch import nn

from landscape.errors import UnknownNameError
from landscape.lm_model import TinyLM


def conv_bn_relu(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """conv(w)-BN-ReLU, conv(2w, /2)-BN-ReLU, conv(4w, /2)-BN-ReLU, avg pool to 3x3, linear.

    With w=16 on 28x28 MNIST: 0.03 M parameters, about 2 M multiply-adds per image. The 3x3
    pooled map (not a global average) keeps the spatial layout digits need.
    """

    def __init__(self, in_channels=1, num_classes=10, width=16):
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_bn_relu(in_channels, w), conv_bn_relu(w, 2 * w, 2),
                                      conv_bn_relu(2 * w, 4 * w, 2))
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(4 * w * 9, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # projection shortcut (as pytorchcv's resnet20, used by GDFQ)
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 inputs (He et al. 2016, CIFAR variant): 3 stages x 3 blocks, 16/32/64."""

    def __init__(self, in_channels=3, num_classes=10, width=16):
        super().__init__()
        w = width
        self.stem = conv_bn_relu(in_channels, w)
        blocks, c_in = [], w
        for stage, c_out in enumerate((w, 2 * w, 4 * w)):
            for i in range(3):
                blocks.append(BasicBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


MODELS = {"smallcnn": SmallCNN, "resnet20": ResNet20, "tinylm": TinyLM}  # tinylm: landscape.lm_model


def model_spec(name: str, in_channels: int, num_classes: int, width: int = 16) -> dict:
    if name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r}; choose {', '.join(MODELS)}")
    return {"name": name, "in_channels": int(in_channels), "num_classes": int(num_classes),
            "width": int(width)}


def build_model(spec: dict) -> nn.Module:
    """Build an untrained model from a spec made by :func:`model_spec`."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return MODELS[spec["name"]](**kwargs)


@torch.no_grad()
def count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> int:
    """Number of top-1 hits of ``model`` (left in its current mode) on tensors x, y."""
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(y), batch_size):
        out = model(x[start:start + batch_size].to(device))
        correct += (out.argmax(1).cpu() == y[start:start + batch_size]).sum().item()
    return correct


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (%) of ``model`` (left in its current mode) on tensors x, y."""
    return 100.0 * count_correct(model, x, y, batch_size) / max(len(y), 1)
