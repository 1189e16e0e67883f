"""[teacher] weights: a pretrained state_dict in our layout or in pytorchcv's resnet20_cifar10
layout, mapped onto our ResNet-20 (same outputs), and hashed into the run like a trained one."""

import json
import os
import shutil

import pytest
import torch
from torch import nn

from landscape.config import RecipeError, load_recipe
from landscape.models import ResNet20, build_model, evaluate, model_spec
from landscape.pretrained import load_state_dict_file


# --- pytorchcv's CIFAR ResNet, rebuilt with its module names (pytorchcv needs torchvision) ---
# models/common: ConvBlock(conv, bn, activ); models/resnet.py: ResBlock(conv1, conv2), ResUnit(
# body, identity_conv, activ); models/resnet_cifar.py: CIFARResNet(features.init_block,
# features.stage{1,2,3}.unit{1,2,3}, features.final_pool = AvgPool2d(8), output).

class ConvBlock(nn.Module):
    def __init__(self, c_in, c_out, k, stride, activate=True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-5)
        self.activ = nn.ReLU() if activate else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.activ(x) if self.activ is not None else x


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = ConvBlock(c_in, c_out, 3, stride)
        self.conv2 = ConvBlock(c_out, c_out, 3, 1, activate=False)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class ResUnit(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.resize_identity = c_in != c_out or stride != 1
        self.body = ResBlock(c_in, c_out, stride)
        if self.resize_identity:
            self.identity_conv = ConvBlock(c_in, c_out, 1, stride, activate=False)
        self.activ = nn.ReLU()

    def forward(self, x):
        identity = self.identity_conv(x) if self.resize_identity else x
        return self.activ(self.body(x) + identity)


class CIFARResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("init_block", ConvBlock(3, 16, 3, 1))
        c_in = 16
        for i, c in enumerate((16, 32, 64)):
            stage = nn.Sequential()
            for j in range(3):
                stage.add_module(f"unit{j + 1}", ResUnit(c_in, c, 2 if (j == 0 and i != 0) else 1))
                c_in = c
            self.features.add_module(f"stage{i + 1}", stage)
        self.features.add_module("final_pool", nn.AvgPool2d(kernel_size=8, stride=1))
        self.output = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.output(self.features(x).view(x.size(0), -1))


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.num_batches_tracked.fill_(1234)
    return model.eval()


def test_pytorchcv_resnet20_maps_onto_ours_with_equal_outputs(tmp_path):
    pcv = _randomised(CIFARResNet(10), 0)
    keys = list(pcv.state_dict())
    assert "features.stage2.unit1.identity_conv.conv.weight" in keys and "output.bias" in keys
    assert len(keys) == len(ResNet20().state_dict())  # one to one
    path = tmp_path / "resnet20_cifar10-0597-9b0024ac.pth"
    torch.save(pcv.state_dict(), path)
    spec = model_spec("resnet20", 3, 10, 16)
    ours = build_model(spec)
    ours.load_state_dict(load_state_dict_file(path, spec))
    ours.eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), pcv(x), rtol=0, atol=1e-6)
    # DataParallel's "module." prefix and a training checkpoint's "state_dict" wrapper too
    torch.save({"state_dict": {"module." + k: v for k, v in pcv.state_dict().items()}}, path)
    assert torch.equal(load_state_dict_file(path, spec)["fc.weight"], pcv.output.weight)


def test_weights_that_do_not_fit_name_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_randomised(CIFARResNet(100), 0).state_dict(), path)
    with pytest.raises(RecipeError, match=r"fc.weight has shape \(100, 64\), the model of \[model\] "
                                          r".* needs \(10, 64\)"):
        load_state_dict_file(path, model_spec("resnet20", 3, 10, 16))
    torch.save(_randomised(CIFARResNet(10), 0).state_dict(), path)
    with pytest.raises(RecipeError, match="pytorchcv's ResNet layout, but \\[model\\] name = 'smallcnn'"):
        load_state_dict_file(path, model_spec("smallcnn", 3, 10, 16))
    path.write_text("not a torch file")
    with pytest.raises(RecipeError, match="is not a torch state_dict file"):
        load_state_dict_file(path, model_spec("resnet20", 3, 10, 16))
    with pytest.raises(RecipeError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.pt", model_spec("resnet20", 3, 10, 16))


def test_a_teacher_from_a_file_is_cached_and_hashed_into_the_run(tmp_path):
    from landscape.checkpoints import list_checkpoints, load_checkpoint, load_teacher_file, sha256_file
    from landscape.data import load_dataset
    from tiny_runs import TINY, train_tiny

    recipe = load_recipe(TINY)
    data = load_dataset("digits")
    spec = model_spec("smallcnn", 1, 10, recipe["model"]["width"])
    teacher = _randomised(build_model(spec), 1)
    weights = tmp_path / "mine.pt"
    torch.save(teacher.state_dict(), weights)
    recipe["teacher"]["weights"] = str(weights)
    run_dir = train_tiny(recipe, tmp_path / "ck", ["ptq"])[0]
    ckpt = load_checkpoint(list_checkpoints(run_dir)[-1][1])
    t_path = (run_dir / ckpt["teacher"]["path"]).resolve()
    assert ckpt["teacher"]["sha256"] == sha256_file(t_path)
    t_file = load_teacher_file(t_path)
    assert t_file["source"]["weights_sha256"] == sha256_file(weights)
    assert t_file["test_acc"] == pytest.approx(evaluate(teacher, data.x_test, data.y_test))
    assert all(torch.equal(t_file["state_dict"][k], v) for k, v in teacher.state_dict().items())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["teacher"] == {"weights_sha256": sha256_file(weights)}
    # the same file elsewhere is the same teacher: the finished run is left alone
    moved = tmp_path / "elsewhere.pt"
    shutil.move(weights, moved)
    recipe["teacher"]["weights"] = str(moved)
    stamp = os.stat(run_dir / "epoch_0000.pt").st_mtime_ns
    train_tiny(recipe, tmp_path / "ck", ["ptq"])
    assert os.stat(run_dir / "epoch_0000.pt").st_mtime_ns == stamp
