"""The paper's inter-epoch metric per layer, and the epoch-mean gradient it rests on, against
computations made here without the trainer's or the analyzer's code (issue 7 §2):

- the per-layer rows of ``interepoch_cosine``: cos of each layer's slice of the two stored
  epoch-mean gradients, the slices cut by hand from the student's parameter shapes;
- the stored epoch mean itself: the mean over an epoch's optimizer steps of gradients computed
  here by autograd, on a student rebuilt from the weights of each step, of a KL written out by
  hand against teacher logits recomputed from the teacher file.
"""

import copy
import shutil
from collections import OrderedDict

import pytest
import torch

from landscape.analyzers import analyze_runs
from landscape.checkpoints import load_checkpoint, rebuild_student, rebuild_teacher
from landscape.zsq import trainer
from tiny_runs import recipe, train_tiny  # noqa: F401 - the shared fixture


@pytest.fixture(scope="module")
def ait(recipe, digits_tiny, tmp_path_factory):
    """An ait run (KL + GI, weight decay on) trained once, with what the student saw at every
    optimizer step: its weights and buffers, its mode, and its input batch (the session's
    cached teacher reused)."""
    out = tmp_path_factory.mktemp("ck")
    shutil.copytree(digits_tiny / "teachers", out / "teachers")
    steps: dict[int, list] = {}
    epoch = {"now": 0}
    real_fit, real_epoch = trainer.Run.fit, trainer.Run.train_epoch

    def fit(self, *args, **kwargs):
        def grab(module, inputs):
            if torch.is_grad_enabled():  # a training forward (warm-up and evaluation run without grad)
                state = OrderedDict((k, v.detach().clone()) for k, v in module.state_dict().items())
                steps.setdefault(epoch["now"], []).append((state, module.training, inputs[0].detach().clone()))
        handle = self.student.register_forward_pre_hook(grab)
        try:
            return real_fit(self, *args, **kwargs)
        finally:
            handle.remove()

    def train_epoch(self, e, *args, **kwargs):
        epoch["now"] = e
        return real_epoch(self, e, *args, **kwargs)

    changed = copy.deepcopy(recipe)
    changed["runs"]["ait"]["weight_decay"] = 1e-2  # the mean is before weight decay: make it matter
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer.Run, "fit", fit)
    mp.setattr(trainer.Run, "train_epoch", train_epoch)
    try:
        run_dir = train_tiny(changed, out, ["ait"])[0]
    finally:
        mp.undo()
    return run_dir, steps


def _kl_by_hand(s_logits, t_logits, T):
    """T² · Σ_i Σ_c p_t log(p_t / p_s) / B with p = softmax(logits / T) (batchmean)."""
    p_t = torch.softmax(t_logits / T, dim=1)
    log_p_s = s_logits / T - torch.logsumexp(s_logits / T, dim=1, keepdim=True)
    return T * T * (p_t * (torch.log(p_t) - log_p_s)).sum() / s_logits.shape[0]


def test_per_layer_interepoch_rows_equal_hand_cosines_of_the_stored_means(ait, tmp_path):
    run_dir, _ = ait
    tables = analyze_runs([run_dir], analyses=["interepoch"], out_dir=tmp_path / "t", device="cpu",
                          settings={"interepoch": {"per_layer": True, "fixed_batches": False}}, progress=False)
    df = tables["interepoch"]
    df = df[(df.metric == "interepoch_cosine") & (df.epoch == 3)]
    assert (df.prev_epoch == 2).all() and (df.loss == "train").all()
    c2, c3 = (load_checkpoint(run_dir / f"epoch_000{e}.pt") for e in (2, 3))
    names = c3["epoch_grad"]["names"]
    assert names == c2["epoch_grad"]["names"]
    sizes = dict((n, p.numel()) for n, p in rebuild_student(c3).named_parameters())
    a, b = (c["epoch_grad"]["mean"].double() for c in (c2, c3))
    assert a.numel() == b.numel() == sum(sizes[n] for n in names)
    # the slices by hand: walk the parameters in order, a layer is the name without its last part
    by_layer: dict[str, list[int]] = {}
    start = 0
    for n in names:
        by_layer.setdefault(n.rsplit(".", 1)[0], []).extend(range(start, start + sizes[n]))
        start += sizes[n]
    assert set(df.layer) == set(by_layer) | {"all"} and len(by_layer) >= 4
    for layer, idx in by_layer.items():
        x, y = a[idx], b[idx]
        expected = float((x * y).sum() / (x.norm() * y.norm()))
        got = df[df.layer == layer].value.item()
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), layer
    expected_all = float((a * b).sum() / (a.norm() * b.norm()))
    assert df[df.layer == "all"].value.item() == pytest.approx(expected_all, rel=1e-9, abs=1e-12)
    per_layer = df[df.layer != "all"].value
    assert per_layer.nunique() == len(per_layer) and (per_layer.abs() < 1 - 1e-6).all()  # real, distinct


def test_the_stored_epoch_mean_equals_gradients_computed_here(ait):
    run_dir, steps = ait
    assert sorted(steps) == [2, 3] and all(len(v) == 4 for v in steps.values())  # 4 steps per epoch
    ckpt = load_checkpoint(run_dir / "epoch_0002.pt")
    cfg = ckpt["config"]
    assert (cfg["ce_scale"], cfg["kd_scale"], ckpt["kl_reduction"]) == (0.0, 1.0, "batchmean")
    teacher = rebuild_teacher(ckpt)
    for epoch in (2, 3):
        saved = load_checkpoint(run_dir / f"epoch_000{epoch}.pt")["epoch_grad"]
        grads = []
        for state, training, x in steps[epoch]:
            student = rebuild_student(ckpt)
            student.load_state_dict(state)
            student.train(training)
            params = [p for _, p in student.named_parameters()]
            with torch.no_grad():
                t_logits = teacher(x)
            loss = _kl_by_hand(student(x), t_logits, ckpt["temperature"])
            g = torch.autograd.grad(loss, params, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1).double()
                                    for p, gi in zip(params, g)]))
        mean = torch.stack(grads).mean(0)
        assert saved["names"] == [n for n, _ in student.named_parameters()] and saved["n_steps"] == 4
        assert mean.norm() > 0 and not torch.equal(grads[0], grads[1])
        torch.testing.assert_close(saved["mean"].double(), mean, rtol=1e-4, atol=1e-6)
        cos = float(saved["mean"].double() @ mean / (saved["mean"].double().norm() * mean.norm()))
        assert cos == pytest.approx(1.0, abs=1e-9)
    # the weights moved between the steps (GI scaled them; weight decay is on), so each step's
    # gradient really was taken at that step's weights
    first, last = steps[2][0][0], steps[3][-1][0]
    assert any(not torch.equal(first[k], last[k]) for k in first if k.endswith("weight"))
