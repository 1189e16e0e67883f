"""One run of the zero-shot quantization trainer, readable top to bottom.

    student = quantize_model(teacher)            # every conv/linear, ReLU -> ReLU + ActQuant
    for epoch in 1..epochs:
        warm-up epochs (1..warmup_epochs): the generator trains, the student only calibrates
            its activation ranges (EMA); after them the ranges are frozen and the student trains
        for each of iters_per_epoch steps:
            synthetic: x = G(z, y); G steps on CE(teacher(x), y) + bns_scale * BNS (Adam)
            real:      x, y = a batch of training images
            student loss = ce_scale * CE(s, y) + kd_scale * T^2 KL(teacher || student)
            backward; add p.grad to the epoch's mean gradient (before κ and momentum)
            InundatedSGD step (GI when the run has gi = true), crossings recorded per layer
        test accuracy (and the best so far); append the metrics.csv row (with the effective
        batch, N ranks × batch_size) and crossings.csv rows; then the checkpoint (sealed with
        its content hash)

The checkpoint is the commit point: on resume, CSV rows of epochs after the last checkpoint
are dropped and the epoch is redone from the saved state (RNG states included), which gives
the same weights as an uninterrupted run on the same device.

On N ranks (``landscape train RECIPE --nproc N``) the same loop runs on every rank with
``self.par`` (:class:`~landscape.zsq.parallel.DataParallel`): each rank takes its block of the
global batch of N × batch_size samples, DistributedDataParallel averages the gradients, losses
and accuracy are global, and rank 0 alone writes the logs and checkpoints. In one process every
``self.par`` call is the identity.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from landscape.checkpoints import (FORMAT, VERSION, checkpoint_path, save_atomic, seal,
                                   teacher_from_file)
from landscape.data import Dataset, iterate_batches
from landscape.losses import ce, kl_divergence
from landscape.models import evaluate
from landscape.quant import calibrate, calibrating, quantize_model
from landscape.zsq import tables
from landscape.zsq.epoch_grad import GradientMean
from landscape.zsq.errors import TrainingError  # noqa: F401 - also importable from here, as before
from landscape.zsq.generator import BNStatsLoss, Generator
from landscape.zsq.gi import InundatedSGD, param_groups
from landscape.zsq.parallel import DataParallel, batch_record

StepHook = Callable[[str, int, int], None]


def schedule_factor(epoch: int, milestones, gamma: float) -> float:
    """MultiStepLR's factor for 1-based ``epoch``: gamma per milestone already passed."""
    return gamma ** sum(epoch - 1 >= m for m in milestones)


def rng_state(sampler: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "sampler": sampler.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, sampler: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    sampler.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Run:
    """State of one run (student, generator, optimizers, sampler) and its epoch loop."""

    def __init__(self, cfg: dict, recipe: dict, data: Dataset, teacher_file: dict,
                 teacher_ref: dict, run_dir: Path, seed: int, device, recipe_hash: str = "",
                 threads: int = 1, parallel: DataParallel | None = None):
        self.cfg, self.recipe, self.data = cfg, recipe, data
        self.par = parallel or DataParallel()
        self.run_dir, self.seed, self.device = Path(run_dir), seed, torch.device(device)
        self.teacher_ref, self.recipe_hash, self.threads = teacher_ref, recipe_hash, threads
        self.teacher_acc = teacher_file["test_acc"]
        self.best_acc = float("-inf")
        self.model_spec = teacher_file["model_spec"]
        torch.manual_seed(seed)
        self.teacher = teacher_from_file(teacher_file, self.device).requires_grad_(False)
        # the quantizers only where not "uniform", so a default checkpoint is what it was before them
        self.quant = {"w_bits": cfg["w_bits"], "a_bits": cfg["a_bits"],
                      "act_momentum": recipe["quant"]["act_momentum"],
                      "weight_zero_point": cfg["weight_zero_point"],
                      **{k: cfg[k] for k in ("weight", "act") if k in cfg}}
        self.student = quantize_model(self.teacher, cfg["w_bits"], cfg["a_bits"],
                                      self.quant["act_momentum"], weight=cfg.get("weight", "uniform"),
                                      act=cfg.get("act", "uniform"),
                                      weight_zero_point=cfg["weight_zero_point"]).requires_grad_(True)
        self.sampler = torch.Generator().manual_seed(seed)
        self.generator = self.gen_opt = None
        if cfg["source"] == "synthetic":
            self.generator = Generator(data.num_classes, data.channels, data.size,
                                       cfg["latent_dim"], cfg["gen_width"]).to(self.device)
            self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=cfg["gen_lr"],
                                            betas=(0.5, 0.999))
        self.opt = InundatedSGD(param_groups(self.student), lr=cfg["lr"],
                                momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                                weight_decay=cfg["weight_decay"],
                                rho=cfg["rho"] if cfg["gi"] else None,
                                kappa_max=cfg["kappa_max_warmup"], bisect_steps=cfg["bisect_steps"],
                                form=cfg["gi_form"])
        # what the forward passes of training go through (DDP wrappers on N ranks)
        self.student_model = self.par.wrap(self.student)
        self.generator_model = self.par.wrap(self.generator) if self.generator is not None else None

    # ------------------------------------------------------------------ checkpoint state

    def checkpoint(self, epoch: int, phase: str, batches: list, metrics: dict,
                   epoch_grad: dict | None) -> dict:
        """The sealed checkpoint dict of ``epoch`` (see :mod:`landscape.checkpoints`)."""
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
        cfg = self.cfg
        return seal({
            "format": FORMAT, "version": VERSION, "run": cfg["name"], "recipe": self.recipe["name"],
            "recipe_hash": self.recipe_hash, "seed": self.seed, "epoch": epoch, "phase": phase,
            "config": dict(cfg), "threads": self.threads,
            "model_spec": self.model_spec, "quant": self.quant, "data_spec": self.data.spec(),
            "student_state": cpu(self.student.state_dict()),
            "generator_spec": self.generator.spec() if self.generator else None,
            "generator_state": cpu(self.generator.state_dict()) if self.generator else None,
            "optimizer_state": self.opt.state_dict(),
            "generator_optimizer_state": self.gen_opt.state_dict() if self.gen_opt else None,
            "rng_state": rng_state(self.sampler), "teacher": self.teacher_ref,
            "analysis_batches": [(x.detach().cpu(), y.detach().cpu()) for x, y in batches],
            "temperature": cfg["temperature"], "kl_reduction": cfg["kl_reduction"],
            # the row without the wall clock; effective_batch is left out too, so checkpoints are
            # the same as before metrics.csv had it (config and `distributed` already state it)
            "metrics": {k: v for k, v in metrics.items() if k not in ("seconds", "effective_batch")},
            "epoch_grad": epoch_grad,
            **({"distributed": batch_record(self.par.world, cfg["batch_size"])} if self.par.active else {}),
        })

    def shared_state(self) -> dict:
        """What must be the same on every rank: the student (weights, activation ranges) and the
        generator's weights (its BatchNorm running statistics are each rank's own)."""
        out = {"student": self.student.state_dict()}
        if self.generator is not None:
            out["generator"] = dict(self.generator.named_parameters())
        return out

    def restore(self, ckpt: dict) -> None:
        self.student.load_state_dict(ckpt["student_state"])
        self.opt.load_state_dict(ckpt["optimizer_state"])
        if self.generator is not None:
            self.generator.load_state_dict(ckpt["generator_state"])
            self.gen_opt.load_state_dict(ckpt["generator_optimizer_state"])
        set_rng_state(ckpt["rng_state"], self.sampler)
        self.best_acc = ckpt["metrics"]["best_acc"]

    # ------------------------------------------------------------------ one epoch

    def real_batches(self, n_steps: int):
        """n_steps real training batches, reshuffled each pass (order from the run's sampler);
        on N ranks the global batches of N × batch_size (each rank keeps its block)."""
        bs = self.par.global_size(self.cfg["batch_size"])
        while True:
            for batch in iterate_batches(self.data.x_train, self.data.y_train, bs, self.sampler,
                                         drop_last=len(self.data.y_train) >= bs):
                yield batch
                n_steps -= 1
                if n_steps == 0:
                    return

    def student_loss(self, s_logits, t_logits, y):
        cfg = self.cfg
        loss_ce = ce(s_logits, y)
        loss_kl = kl_divergence(s_logits, t_logits, cfg["temperature"], cfg["kl_reduction"])
        return cfg["ce_scale"] * loss_ce + cfg["kd_scale"] * loss_kl, loss_ce, loss_kl

    def train_epoch(self, epoch: int, bns: BNStatsLoss | None, step_hook: StepHook | None,
                    last_good: str) -> "EpochLog":
        cfg = self.cfg
        warm = epoch <= cfg["warmup_epochs"]
        calib = epoch <= max(cfg["warmup_epochs"], 1)  # ranges need at least one epoch of EMA
        f = schedule_factor(epoch, cfg["milestones"], cfg["gamma"])
        gi_warm = epoch <= cfg["warmup_epochs"] + cfg["gi_warmup_epochs"]
        self.opt.set_schedule(lr=cfg["lr"] * f, rho=cfg["rho"] * f,
                              kappa_max=cfg["kappa_max_warmup"] if gi_warm else cfg["kappa_max"])
        if self.gen_opt is not None:
            for g in self.gen_opt.param_groups:
                g["lr"] = cfg["gen_lr"] * f
        log = EpochLog(epoch, warm, gi_warm, None if warm else GradientMean(self.student), cfg)
        real = self.real_batches(cfg["iters_per_epoch"]) if cfg["source"] == "real" else None
        step0 = (epoch - 1) * cfg["iters_per_epoch"]
        for i in range(cfg["iters_per_epoch"]):
            step = step0 + i + 1
            losses = {}
            if self.generator is not None:  # generator step on CE(teacher(G(z, y)), y) + BNS
                bns.clear()
                self.generator.train()
                z, y = self.generator.draw(self.par.global_size(cfg["batch_size"]), self.sampler)
                z, y = self.par.local(z), self.par.local(y)
                x = self.generator_model(z, y)
                t_logits = self.teacher(x)
                loss_bns = bns.loss()
                loss_g = ce(t_logits, y) + cfg["bns_scale"] * loss_bns
                seen = self.par.mean({"loss_g": loss_g, "loss_bns": loss_bns})
                self._check(seen["loss_g"], "generator loss", epoch, step, last_good)
                self.gen_opt.zero_grad(set_to_none=True)
                loss_g.backward()
                self.gen_opt.step()
                x, t_logits = x.detach(), t_logits.detach()
                x_all = self.par.gather(x) if calib else x
                losses.update(seen)
            else:
                x_all, y = next(real)
                x, y = self.par.local(x_all).to(self.device), self.par.local(y).to(self.device)
                with torch.no_grad():
                    t_logits = self.teacher(x)
            if calib and self.par.active:  # ranges from the global batch, as one process would
                with calibrating(self.student, True), torch.no_grad():
                    self.student(x_all.to(self.device))
            with calibrating(self.student, calib and not self.par.active), torch.set_grad_enabled(not warm):
                s_logits = self.student_model(x)
                loss, loss_ce, loss_kl = self.student_loss(s_logits, t_logits, y)
            seen = self.par.mean({"loss_ce": loss_ce, "loss_kl": loss_kl, "loss_total": loss})
            self._check(seen["loss_total"], "student loss", epoch, step, last_good)
            if not warm:
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                log.grad_mean.add()  # the raw gradient: before κ, weight decay and momentum
                self.opt.step()
            losses.update(seen)
            log.after_step(step, losses, x, y, [] if warm else self.opt.last_records)
            if step_hook is not None:
                step_hook(cfg["name"], epoch, i + 1)
        return log

    def _check(self, loss, what, epoch, step, last_good):
        if not torch.isfinite(loss):
            raise TrainingError(
                f"run {self.cfg['name']}-seed{self.seed}: {what} is {loss.item()} at epoch {epoch}, "
                f"step {step}; stopped. The last good checkpoint is {last_good}; lower lr "
                "(or rho) in the recipe and re-run `landscape train`, which resumes from it")

    # ------------------------------------------------------------------ the loop

    def fit(self, start_epoch: int, epochs: int, step_hook: StepHook | None = None,
            progress: bool = True) -> None:
        cfg = self.cfg
        bns = BNStatsLoss(self.teacher) if self.generator is not None else None
        bar = tqdm(range(start_epoch, epochs + 1), desc=f"{cfg['name']}-seed{self.seed}",
                   disable=not progress or not self.par.is_main, leave=False, initial=start_epoch - 1,
                   total=epochs)
        try:
            for epoch in bar:
                t0 = time.perf_counter()
                last = checkpoint_path(self.run_dir, epoch - 1)
                last_good = str(last) if last.exists() else "none (no epoch finished yet)"
                log = self.train_epoch(epoch, bns, step_hook, last_good)
                acc = self.par.accuracy(self.student, self.data.x_test, self.data.y_test)
                self.best_acc = max(self.best_acc, acc)
                group = self.opt.param_groups[0]
                row = tables.metrics_row(epoch, "warmup" if log.warm else "train", acc,
                                         self.best_acc, self.teacher_acc, log.means(),
                                         log.crossings, lr=group["lr"], rho=group["rho"] or 0.0,
                                         seconds=time.perf_counter() - t0,
                                         effective_batch=self.par.global_size(cfg["batch_size"]))
                epoch_grad = log.grad_mean.result() if log.grad_mean is not None else None
                self.par.fingerprint_check(self.shared_state(), f"run {cfg['name']}-seed{self.seed}, "
                                           f"epoch {epoch}")
                if self.par.is_main:
                    log.warn_if_capped(self.run_dir, row["kappa_capped"])
                    tables.append_rows(self.run_dir / "metrics.csv", [row], tables.METRICS_COLUMNS)
                    tables.append_rows(self.run_dir / "crossings.csv", log.crossings,
                                       tables.CROSSING_COLUMNS)
                    save_atomic(self.checkpoint(epoch, row["phase"], log.kept, row, epoch_grad),
                                checkpoint_path(self.run_dir, epoch))
                bar.set_postfix(acc=f"{acc:.2f}", best=f"{self.best_acc:.2f}", phase=row["phase"])
        finally:
            if bns is not None:
                bns.remove()

    def post_training_quantization(self) -> None:
        """The `ptq` run: calibrate activation ranges on real batches, no training; epoch 0."""
        cfg = self.cfg
        batches = list(self.real_batches(cfg["calib_batches"]))
        calibrate(self.student, batches)
        acc = evaluate(self.student, self.data.x_test, self.data.y_test)
        self.best_acc = acc
        row = tables.metrics_row(0, "ptq", acc, acc, self.teacher_acc, {}, [], lr=0.0, rho=0.0,
                                 seconds=0.0, effective_batch=cfg["batch_size"])  # the calibration batch
        tables.append_rows(self.run_dir / "metrics.csv", [row], tables.METRICS_COLUMNS)
        tables.append_rows(self.run_dir / "crossings.csv", [], tables.CROSSING_COLUMNS)
        m = cfg["analysis_batch_size"]
        kept = [(x[:m], y[:m]) for x, y in batches[:cfg["analysis_batches"]]]
        save_atomic(self.checkpoint(0, "ptq", kept, row, None), checkpoint_path(self.run_dir, 0))


class EpochLog:
    """The bookkeeping of one epoch, kept out of the step body: mean losses, the GI records
    (crossings.csv rows), the first analysis batches, and the mean gradient (None in warm-up)."""

    def __init__(self, epoch: int, warm: bool, gi_warm: bool, grad_mean: GradientMean | None,
                 cfg: dict):
        self.epoch, self.warm, self.gi_warm, self.grad_mean = epoch, warm, gi_warm, grad_mean
        self.n_keep, self.keep_size = cfg["analysis_batches"], cfg["analysis_batch_size"]
        self.sums: dict[str, float] = {}
        self.n_steps = 0
        self.crossings: list[dict] = []
        self.kept: list[tuple] = []

    def after_step(self, step: int, losses: dict, x, y, records: list[dict]) -> None:
        self.n_steps += 1
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.item()
        self.crossings += [{"epoch": self.epoch, "step": step, **r} for r in records]
        if len(self.kept) < self.n_keep:
            self.kept.append((x[:self.keep_size].detach(), y[:self.keep_size].detach()))

    def means(self) -> dict:
        return {k: v / max(self.n_steps, 1) for k, v in self.sums.items()}

    def warn_if_capped(self, run_dir: Path, n_capped: int) -> None:
        """After the GI warm-up the κ cap is a safety net only; say so when it binds."""
        if n_capped and not self.gi_warm:
            layers = sorted({r["layer"] for r in self.crossings if r["capped"]})
            warnings.warn(f"{run_dir}: epoch {self.epoch}: the safety cap kappa_max stopped the "
                          f"GI search {n_capped} times before the target crossing fraction "
                          f"(layers {', '.join(layers[:4])}); raise [train] kappa_max if this "
                          "persists", stacklevel=2)
