r"""The float language model of a ``[model] name = "tinylm"`` recipe: its ``[lm]`` table, its
training (plain next-token cross-entropy, AdamW) and its cache.

    [lm]                  # every key optional; defaults below
    blocks = 2            # transformer blocks
    heads = 4             # attention heads ([model] width: the embedding width, a multiple of heads)
    context = 64          # tokens per window (training and every measurement)
    mlp_ratio = 4         # MLP hidden width = mlp_ratio · width
    steps = 400           # AdamW steps on random training windows (analyses/tinylm.toml: 1000)
    batch_size = 32       # windows per step
    lr = 3e-3             # peak learning rate: linear warm-up, cosine decay to lr/10
    warmup = 20
    weight_decay = 0.1    # on matrices only (not biases, LayerNorms, embeddings), as nanoGPT
    grad_clip = 1.0

``[teacher]`` is the image teachers' table and is not used by a language model. The teacher is
trained once per (data, model, lm, seed) and cached like the image teacher
(:mod:`landscape.zsq.teacher`): ``<root>/teachers/pydoc-tinylm-<hash8>-seed<S>.pt``, sealed,
written under a lock, with the kernel mode that made it recorded beside it; in the
reproducible kernel mode with one thread the same recipe and seed give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from landscape.checkpoints import TEACHER_FORMAT, VERSION, load_teacher_file, save_atomic, seal, write_text_atomic
from landscape.curvature.batches import to_device
from landscape.kernels import REPRODUCIBLE
from landscape.kernels import current as current_kernels
from landscape.lm_model import lm_spec
from landscape.locking import exclusive_lock
from landscape.models import build_model
from landscape.safe_paths import inside
from landscape.schema import Float, Int, check_section
from landscape.text_data import TextData, fixed_windows, random_windows

__all__ = ["LM_FIELDS", "lm_settings", "recipe_lm_spec", "train_lm", "get_lm_teacher", "next_token_loss",
           "is_lm_recipe"]

LM_FIELDS = {
    "blocks": Int(2, lo=1, hi=64),
    "heads": Int(4, lo=1, hi=256),
    "context": Int(64, lo=2, hi=8192),
    "mlp_ratio": Int(4, lo=1, hi=64),
    "steps": Int(400, lo=1),
    "batch_size": Int(32, lo=1, hi=1 << 16),
    "lr": Float(3e-3, 0.0, 10.0, lo_open=True),
    "warmup": Int(20, lo=0),
    "weight_decay": Float(0.1, 0.0, 10.0),
    "grad_clip": Float(1.0, 0.0, 1e6, lo_open=True),
}


def is_lm_recipe(recipe: dict) -> bool:
    """Whether the recipe's model is a language model (its teacher and study are this module's)."""
    return recipe.get("model", {}).get("name") == "tinylm"


def lm_settings(recipe: dict) -> dict:
    """The recipe's ``[lm]`` table checked, with defaults; the width must split into the heads."""
    from landscape.schema import RecipeError

    where = f"{recipe.get('path', recipe.get('name', '<recipe>'))}: [lm]"
    out = check_section(dict(recipe.get("lm") or {}), LM_FIELDS, where)
    width = recipe["model"]["width"]
    if width % out["heads"]:
        raise RecipeError(f"{where} heads = {out['heads']} does not divide [model] width = {width}; "
                          "choose a width that is a multiple of heads")
    return out


def recipe_lm_spec(recipe: dict, data: TextData) -> dict:
    s = lm_settings(recipe)
    return lm_spec(data.vocab_size, recipe["model"]["width"], s["blocks"], s["heads"], s["context"], s["mlp_ratio"])


def next_token_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from tokens ≤ t over every window of the batch."""
    ids = batch["input_ids"]
    logits = model(ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, batches: list[dict]) -> float:
    """Mean next-token cross-entropy (nats per token) over equal-size batches, in eval mode."""
    was = model.training
    model.eval()
    try:
        return float(sum(float(next_token_loss(model, b)) for b in batches) / len(batches))
    finally:
        model.train(was)


def train_lm(recipe: dict, data: TextData, seed: int, device="cpu") -> dict:
    """Train the recipe's language model from scratch; returns the sealed teacher-file dict."""
    s = lm_settings(recipe)
    spec = recipe_lm_spec(recipe, data)
    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=s["lr"], betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < s["warmup"]:
            return (step + 1) / s["warmup"]
        t = (step - s["warmup"]) / max(1, s["steps"] - s["warmup"])
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(s["steps"]):
        batch = to_device(random_windows(data.train, s["batch_size"], s["context"], gen), torch.device(device))
        loss = next_token_loss(model, batch)
        if not torch.isfinite(loss):
            from landscape.zsq.trainer import TrainingError

            raise TrainingError(f"language-model training diverged (loss {loss.item()}); lower [lm] lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
        opt.step()
        sched.step()
    model.eval()
    val = fixed_windows(data.val, 1, min(64, len(data.val) // s["context"]), s["context"])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return seal({"format": TEACHER_FORMAT, "version": VERSION, "model_spec": spec, "state_dict": state,
                 "val_loss": evaluate_lm(model, to_device(val, torch.device(device))),
                 "data_spec": data.spec(), "teacher_config": s, "source": "trained", "seed": seed,
                 "key": lm_key(recipe)})


def lm_key(recipe: dict) -> str:
    """Eight hex digits of the data, model and ``[lm]`` tables (and a non-reproducible kernel mode)."""
    ident = {"data": {k: v for k, v in recipe["data"].items() if k != "root"}, "model": recipe["model"],
             "lm": lm_settings(recipe)}
    if current_kernels() != REPRODUCIBLE:
        ident["kernels"] = current_kernels()
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]


def lm_teacher_path(recipe: dict, out: Path, seed: int) -> Path:
    return Path(out) / "teachers" / f"{recipe['data']['name']}-tinylm-{lm_key(recipe)}-seed{seed}.pt"


def get_lm_teacher(recipe: dict, data: TextData, out: str | Path, seed: int, device="cpu") -> tuple[Path, dict]:
    """The cached language-model teacher ``(path, file dict)``, trained first if absent, corrupt,
    or made in another kernel mode."""
    from landscape.checkpoints import CheckpointError
    from landscape.zsq.teacher import _same_kernels, kernels_record

    path = lm_teacher_path(recipe, Path(out), seed)
    inside(Path(out), path)

    def sound():
        try:
            return load_teacher_file(path) if path.is_file() and _same_kernels(path) else None
        except CheckpointError:
            return None

    found = sound()
    if found is not None:
        return path, found
    with exclusive_lock(path.with_suffix(".lock"), f"teacher cache {path}"):
        found = sound()
        if found is None:
            save_atomic(train_lm(recipe, data, seed, device), path)
            write_text_atomic(current_kernels(), kernels_record(path))
    return path, load_teacher_file(path)
