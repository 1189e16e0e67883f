"""Pretrained teachers from a file: our own state_dict layout or pytorchcv's ResNet-20.

The official AIT code starts from pytorchcv's pretrained ``resnet20_cifar10`` (and
``resnet20_cifar100``). Its state_dict maps one to one onto our :class:`~landscape.models.ResNet20`
(same architecture: 3x3 stem conv-BN-ReLU, 3 stages x 3 basic blocks of 16/32/64 channels,
stride 2 in the first conv of stages 2 and 3, a 1x1 conv-BN projection on those shortcuts,
ReLU after the addition, global 8x8 average pool, linear head; BN eps 1e-5):

    pytorchcv                                         ours
    features.init_block.conv.weight                   stem.0.weight
    features.init_block.bn.<bn>                       stem.1.<bn>
    features.stage{s}.unit{u}.body.conv{c}.conv.weight layers.{3(s-1)+u-1}.conv{c}.weight
    features.stage{s}.unit{u}.body.conv{c}.bn.<bn>    layers.{3(s-1)+u-1}.bn{c}.<bn>
    features.stage{s}.unit1.identity_conv.conv.weight layers.{3(s-1)}.shortcut.0.weight
    features.stage{s}.unit1.identity_conv.bn.<bn>     layers.{3(s-1)}.shortcut.1.<bn>
    output.weight, output.bias                        fc.weight, fc.bias

(<bn> = weight, bias, running_mean, running_var, num_batches_tracked; the names were read
from pytorchcv's ``models/resnet_cifar.py``, ``resnet.py`` and ``common`` — pytorchcv itself
is not imported: it needs torchvision.)

    state = load_state_dict_file("resnet20_cifar10-0597-9b0024ac.pth", spec)  # -> our keys
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from landscape.checkpoints import TEACHER_FORMAT, content_hash
from landscape.models import build_model
from landscape.schema import RecipeError

_PCV_BLOCK = re.compile(r"^features\.stage(\d)\.unit(\d)\.(body\.conv(\d)|identity_conv)\.(conv|bn)\.(.+)$")


def is_pytorchcv_resnet(state: dict) -> bool:
    return any(k.startswith("features.init_block.") for k in state)


def pytorchcv_resnet20_key(key: str) -> str | None:
    """Our ResNet-20 key for one pytorchcv ``resnet20_cifar*`` key (None if it has none)."""
    if key.startswith("features.init_block.conv."):
        return "stem.0." + key.split(".", 3)[3]
    if key.startswith("features.init_block.bn."):
        return "stem.1." + key.split(".", 3)[3]
    if key.startswith("output."):
        return "fc." + key[len("output."):]
    m = _PCV_BLOCK.match(key)
    if not m:
        return None
    stage, unit, part, conv_no, kind, rest = m.groups()
    block = 3 * (int(stage) - 1) + int(unit) - 1
    if part == "identity_conv":
        return f"layers.{block}.shortcut.{0 if kind == 'conv' else 1}.{rest}"
    return f"layers.{block}.{'conv' if kind == 'conv' else 'bn'}{conv_no}.{rest}"


def from_pytorchcv_resnet20(state: dict, where: str = "the state_dict") -> dict:
    """pytorchcv ``resnet20_cifar*`` keys -> our ResNet-20 keys (tensors untouched)."""
    out = {}
    for key, value in state.items():
        ours = pytorchcv_resnet20_key(key)
        if ours is None:
            raise RecipeError(f"{where}: key {key!r} is not part of pytorchcv's resnet20_cifar "
                              "layout; expected features.init_block.*, features.stage*.unit*.* "
                              "and output.*")
        out[ours] = value
    return out


def _unwrap(obj, where: str) -> dict:
    """The state_dict inside what torch.load returned (a bare dict, a landscape teacher file,
    or a training checkpoint's ``state_dict``/``model``), without DataParallel's ``module.``."""
    if isinstance(obj, dict) and obj.get("format") == TEACHER_FORMAT:
        try:
            sound = obj.get("content_hash") == content_hash(obj)
        except TypeError:
            sound = False
        if not sound:  # a sealed teacher file: its seal is checked like every read of one
            raise RecipeError(f"{where} is a landscape teacher file whose content hash does not match "
                              "(bytes changed on disk or in a copy); restore it or retrain the teacher")
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RecipeError(f"{where} holds no state_dict (a dict of tensors); save one with "
                          "torch.save(model.state_dict(), PATH)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_dict_file(path: str | Path, spec: dict) -> dict:
    """Read a pretrained state_dict for the model ``spec`` and return it in our key layout.

    Accepted: our own layout (``build_model(spec).state_dict()`` keys) or, for ``resnet20``,
    pytorchcv's. Loaded with ``weights_only=True`` (no code runs). A missing or unexpected key
    or a shape that does not fit is one :class:`RecipeError` naming the file, the key and
    both shapes.
    """
    path = Path(path)
    where = f"[teacher] weights = {str(path)!r}"
    if not path.is_file():
        raise RecipeError(f"{where} does not exist; point it at a saved state_dict (.pt/.pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - junk bytes make torch's unpickler raise anything
        # (IndexError, TypeError, AttributeError, ...): each means "not a state_dict file"
        raise RecipeError(f"{where} is not a torch state_dict file ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    state = _unwrap(obj, where)
    if is_pytorchcv_resnet(state):
        if spec["name"] != "resnet20":
            raise RecipeError(f"{where} is in pytorchcv's ResNet layout, but [model] name = "
                              f"{spec['name']!r}; set [model] name = \"resnet20\"")
        state = from_pytorchcv_resnet20(state, where)
    reference = build_model(spec).state_dict()
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if missing or extra:
        raise RecipeError(f"{where} does not fit the {spec['name']} of [model] "
                          f"(missing {missing[:3]}, unexpected {extra[:3]}); check [model] and the file")
    for key, ref in reference.items():
        if not isinstance(state[key], torch.Tensor):
            raise RecipeError(f"{where}: {key} is {type(state[key]).__name__}, not a tensor; point "
                              "[teacher] weights at a saved state_dict")
        if state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all()):
            raise RecipeError(f"{where}: {key} holds NaN or inf values; point [teacher] weights at a "
                              "trained model's state_dict")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise RecipeError(f"{where}: {key} has shape {tuple(state[key].shape)}, the model of "
                              f"[model] ({spec}) needs {tuple(ref.shape)}; check [model] width "
                              "and the data set's classes")
    return {k: state[k].to(ref.dtype) for k, ref in reference.items()}
