"""The embedded tiny language model of issue 17: the pydoc text source, the causal TinyLM, the LM
recipe's compare settings, per-block damage against layer_damage and direct evaluations, and a
tiny `landscape compare` of a 1-block LM end to end, its tables against direct computations."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape.checkpoints import teacher_from_file
from landscape.compare import compare_settings, run_compare
from landscape.compare.lm_study import _student, block_map, forward_parameters, lm_batches, lm_loss
from landscape.compare.settings import quantizer_pair, split_group
from landscape.config import load_recipe, validate_recipe
from landscape.curvature import mean_loss
from landscape.data import load_dataset
from landscape.lm_model import TinyLM
from landscape.lm_teacher import get_lm_teacher, lm_settings, next_token_loss
from landscape.quant import quantize_model
from landscape.schema import RecipeError
from landscape.sensitivity import block_damage, layer_damage
from landscape.text_data import VOCAB, decode, encode, fixed_windows, load_pydoc, random_windows


def test_pydoc_is_deterministic_and_round_trips():
    a, b = load_pydoc(0.1), load_pydoc(0.1)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.vocab_size == len(VOCAB) == 97
    n = len(a.train) + len(a.val)
    assert len(a.val) == n - round(0.9 * n) and n > 100_000          # ≈ 0.47 MB of help text
    text = "def f(x):\n    return x ** 2  # {ok}~"
    assert decode(encode(text)) == text
    assert encode("é→\t").tolist() == [0, 0, 0]                        # outside the vocabulary: unknown
    assert int((a.train == 0).sum()) < 0.01 * len(a.train)
    w = fixed_windows(a.val, 2, 3, 16)
    assert [tuple(x["input_ids"].shape) for x in w] == [(3, 16), (3, 16)]
    assert torch.equal(w[1]["input_ids"][2], a.val[5 * 16:6 * 16])     # non-overlapping, in order
    r1 = random_windows(a.train, 4, 8, torch.Generator().manual_seed(3))["input_ids"]
    r2 = random_windows(a.train, 4, 8, torch.Generator().manual_seed(3))["input_ids"]
    assert torch.equal(r1, r2)
    assert load_dataset("pydoc", None, 0.1).spec() == a.spec()


def test_tinylm_is_causal():
    torch.manual_seed(0)
    model = TinyLM(vocab=97, width=16, blocks=2, heads=2, context=12).eval()
    ids = torch.randint(0, 97, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (ids[:, 7] + 1) % 97
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 12, 97)
    assert torch.equal(a[:, :7], b[:, :7])                  # earlier positions do not see token 7
    assert (a[:, 7:] - b[:, 7:]).abs().amax() > 1e-4        # later ones do
    names = {n for n, _ in model.named_modules()}
    assert {"blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp", "head"} <= names


def test_lm_recipe_settings():
    recipe = load_recipe("analyses/tinylm.toml")
    s = compare_settings(recipe)
    assert s["a_bits"] is None and s["bits"] == [8, 4, 3, 2] and s["seeds"] == [0, 1, 2]
    assert s["quantizers"][0] == "rtn" and "lsq" in s["quantizers"]
    assert s["budgets"] == [2.5, 3.0, 3.5, 4.0, 6.0]
    assert lm_settings(recipe)["context"] == 64
    assert split_group("rtn_g32") == ("rtn", 32) and split_group("lsq") == ("lsq", None)
    assert quantizer_pair("rtn_g32") == quantizer_pair("rtn") == ("uniform", "uniform")
    bad = copy.deepcopy({k: v for k, v in recipe.items() if k != "path"})
    bad["lm"] = {"heads": 3}
    with pytest.raises(RecipeError, match=r"heads = 3 does not divide \[model\] width = 64"):
        lm_settings(validate_recipe(bad, "bad.toml"))
    with pytest.raises(RecipeError, match=r"mode = \"qat\" fine-tunes image students only"):
        compare_settings({**recipe, "compare": {**recipe["compare"], "mode": "qat"}})
    with pytest.raises(RecipeError, match="only `landscape compare` runs"):
        validate_recipe({**bad, "lm": {}, "runs": {"kd": {}}}, "bad.toml")
    names = ["blocks.0.attn.in_proj_weight", "blocks.0.attn.out_proj.weight", "blocks.0.mlp.0.weight",
             "blocks.1.mlp.2.weight", "head.weight"]
    assert block_map(names, s["blocks"]) == {"0.attn": names[:2], "0.mlp": [names[2]], "1.mlp": [names[3]],
                                             "head": ["head.weight"]}


def _mlp_case():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    batches = [(torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 3, (20,)))]
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    return model, quantize_model(model, 3, None), batches, loss


def test_block_damage_of_single_layers_is_layer_damage():
    model, student, batches, loss = _mlp_case()
    forward = forward_parameters(student)
    blocks = {layer: [f"{layer}.weight"] for layer in ("0", "2", "4")}
    ours = block_damage(model, forward, blocks, loss, batches, trace_matvecs=6, seed=2)
    ref = layer_damage(model, student, loss, batches, trace_matvecs=6, seed=2)
    cols = ["measured", "first_order", "second_order", "trace", "delta_sq_mean", "n_params"]
    pd.testing.assert_frame_equal(ours[cols], ref[cols], rtol=1e-10, atol=1e-14)


def test_block_damage_of_two_layers_against_a_direct_evaluation_and_exact_hessian():
    model, student, batches, loss = _mlp_case()
    forward = forward_parameters(student)
    names = ["0.weight", "2.weight"]
    row = block_damage(model, forward, {"front": names}, loss, batches, trace_matvecs=4).iloc[0]
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n in names:
            dict(moved.named_parameters())[n].copy_(forward[n])
    with torch.no_grad():
        direct = float(loss(moved, batches[0]) - loss(model, batches[0]))
    assert row["measured"] == pytest.approx(direct, rel=1e-12, abs=1e-15)
    params = dict(model.named_parameters())
    delta = torch.cat([(forward[n] - params[n].detach()).reshape(-1) for n in names])
    sizes = [params[n].numel() for n in names]

    def f(flat):
        ws = dict(zip(names, [t.reshape(params[n].shape) for t, n in zip(torch.split(flat, sizes), names)]))
        return loss(lambda x: torch.func.functional_call(model, {**dict(model.named_parameters()), **ws}, (x,)),
                    batches[0])

    H = torch.func.hessian(f)(torch.cat([params[n].detach().reshape(-1) for n in names]))
    assert row["second_order"] == pytest.approx(0.5 * float(delta @ H @ delta), rel=1e-9)  # cross terms included


TINY_LM = {
    "name": "tinylm", "seeds": [0],
    "data": {"name": "pydoc", "test_fraction": 0.1}, "model": {"name": "tinylm", "width": 16},
    "lm": {"blocks": 1, "heads": 2, "context": 16, "steps": 15, "batch_size": 8, "lr": 1e-2, "warmup": 2},
    "compare": {"quantizers": ["rtn_g8", "lsq"], "bits": [4, 2], "a_bits": "none", "budgets": [3, 4],
                "analysis_batches": 1, "analysis_batch_size": 8, "eval_batches": 2, "trace_matvecs": 3,
                "eigen_iters": 2, "layer_trace_matvecs": 2, "n_random": 2},
}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinylm")
    recipe = validate_recipe(copy.deepcopy(TINY_LM), "tinylm.toml")
    readme = root / "README.md"
    readme.write_text("# x\n\n<!-- results:compare:tinylm:findings -->\n<!-- /results:compare:tinylm:findings -->\n"
                      "\n<!-- results:compare:tinylm:timings -->\n<!-- /results:compare:tinylm:timings -->\n",
                      encoding="utf-8")
    torch.set_num_threads(1)
    tables = run_compare(recipe, out=root / "out", checkpoints=root / "ckpt", jobs=1, publish=readme)
    return recipe, root, tables


def test_tiny_lm_compare_tables_against_direct_evaluations(tiny_lm):
    recipe, root, tables = tiny_lm
    curv, sens, alloc = tables["curvature"], tables["sensitivity"], tables["allocation"]
    assert set(sens["layer"]) == {"0.attn", "0.mlp", "head"}   # attention projections quantized too
    assert set(curv["metric"]) == {"trace", "lambda_max", "loss", "val_loss"}
    assert "val_loss" in alloc.columns and "accuracy" not in alloc.columns
    data = load_dataset("pydoc", None, 0.1)
    _, t_file = get_lm_teacher(recipe, data, root / "ckpt", 0)
    teacher = teacher_from_file(t_file).requires_grad_(False)
    settings = compare_settings(recipe)
    batches, evals = lm_batches(data, settings, 16)
    loss = lm_loss()
    with sdpa_kernel(SDPBackend.MATH):
        student = _student(teacher, "rtn_g8", 2, None).eval()
        forward = forward_parameters(student)
        assert {"blocks.0.attn.in_proj_weight", "blocks.0.attn.out_proj.weight"} <= set(forward)
        assert not torch.equal(forward["blocks.0.attn.in_proj_weight"], teacher.blocks[0].attn.in_proj_weight)
        base = float(next_token_loss(teacher, batches[0]))
        for block in ("0.attn", "0.mlp", "head"):                            # one block moved, the rest float
            moved = copy.deepcopy(teacher)
            params = dict(moved.named_parameters())
            with torch.no_grad():
                for n in block_map(list(forward), settings["blocks"])[block]:
                    params[n].copy_(forward[n])
            direct = float(next_token_loss(moved, batches[0])) - base
            row = sens[(sens["quantizer"] == "rtn_g8") & (sens["bits"] == 2) & (sens["layer"] == block)].iloc[0]
            assert row["measured"] == pytest.approx(direct, rel=1e-5, abs=1e-7)
        val = mean_loss(student, loss, evals)
    row = curv[(curv["quantizer"] == "rtn_g8") & (curv["bits"] == 2) & (curv["metric"] == "val_loss")]
    assert float(row["value"].iloc[0]) == pytest.approx(val, rel=1e-6)
    # uniform 4 bits = every block at 4 bits = the 4-bit student itself (weight-only)
    uni = alloc[(alloc["quantizer"] == "rtn_g8") & (alloc["strategy"] == "uniform") & (alloc["budget"] == 4)]
    s4 = curv[(curv["quantizer"] == "rtn_g8") & (curv["bits"] == 4) & (curv["metric"] == "val_loss")]
    assert float(uni["val_loss"].iloc[0]) == pytest.approx(float(s4["value"].iloc[0]), rel=1e-5)
    assert (alloc["avg_bits"] <= alloc["budget"] + 1e-9).all()


def test_tiny_lm_compare_writes_its_own_blocks_and_folder(tiny_lm):
    _, root, _ = tiny_lm
    out = root / "out"
    for name in ("curvature", "sensitivity", "allocation", "spearman", "allocation_claims"):
        assert (out / "tables" / f"{name}.csv").is_file()
    assert (out / "compare_mixed.png").is_file()
    text = (root / "README.md").read_text(encoding="utf-8")
    assert "nats per token" in text and "| rtn_g8 |" in text
    assert "results:compare:findings" not in (out / "results.md").read_text(encoding="utf-8")
