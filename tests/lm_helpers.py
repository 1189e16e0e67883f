"""A tiny causal LM built from torch.nn (as a new user would write one), dict batches, and exact
references by torch.func for the transformer tests.

``TinyLM(attn="mha")`` uses ``nn.MultiheadAttention`` (packed ``in_proj_weight``);
``attn="sdpa"`` calls ``F.scaled_dot_product_attention`` on its own q/k/v projections.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel


class SDPAAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, pad=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        if pad is not None:
            mask = mask[None, None] & pad.bool()[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, attn: str):
        super().__init__()
        self.kind = attn
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True) if attn == "mha" else SDPAAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x, pad=None):
        h = self.ln1(x)
        if self.kind == "mha":
            T = x.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            kpm = None if pad is None else ~pad.bool()
            a = self.attn(h, h, h, attn_mask=causal, key_padding_mask=kpm, need_weights=False)[0]
        else:
            a = self.attn(h, pad)
        x = x + a
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Token + position embeddings, ``n_blocks`` pre-LN blocks, a final LayerNorm and a head."""

    def __init__(self, vocab: int = 7, d: int = 4, heads: int = 2, n_blocks: int = 2, ctx: int = 8, attn: str = "mha"):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(ctx, d))
        self.blocks = nn.ModuleList(Block(d, heads, attn) for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        x = self.tok(input_ids) + self.pos[: input_ids.shape[1]]
        for b in self.blocks:
            x = b(x, attention_mask)
        return self.head(self.ln_f(x))


def make_lm(seed: int = 0, attn: str = "mha", **kw) -> TinyLM:
    torch.manual_seed(seed)
    m = TinyLM(attn=attn, **kw).double().eval()
    with torch.no_grad():  # LayerNorms away from the identity, so their curvature is not trivial
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m


def lm_batches(sizes=(2, 3), T: int = 5, vocab: int = 7, seed: int = 1, pad: bool = True, labels: bool = True):
    """Dict batches; with ``pad`` the last sequence of each batch is right-padded by two tokens, and
    with ``labels`` one label of the first sequence is -100."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        ids = torch.randint(0, vocab, (n, T), generator=g)
        b = {"input_ids": ids}
        if pad:
            mask = torch.ones(n, T, dtype=torch.long)
            mask[-1, -2:] = 0
            b["attention_mask"] = mask
        if labels:
            lab = ids.clone()
            lab[0, 2] = -100
            b["labels"] = lab
        out.append(b)
    return out


def hand_causal_ce(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The documented rule written as loops: pairs (t, t+1) whose label is not -100 and whose context
    and target are both real tokens; mean of -log softmax over them."""
    ids = batch["input_ids"]
    labels = batch.get("labels", ids)
    mask = batch.get("attention_mask", torch.ones_like(ids))
    terms = []
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100 or not (mask[b, t] and mask[b, t + 1]):
                continue
            terms.append(-torch.log_softmax(logits[b, t], dim=-1)[y])
    return torch.stack(terms).mean()


def flat_params(model, names):
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def unflatten(model, names, theta):
    params = dict(model.named_parameters())
    out, i = {}, 0
    for n in names:
        p = params[n]
        out[n] = theta[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def _functional(model, names, theta):
    return lambda *a, **k: functional_call(model, unflatten(model, names, theta), a, k)


@contextlib.contextmanager
def reference_mode():
    """For the torch.func references: attention by the math kernel (differentiable twice, forward
    mode too) and no nn.MultiheadAttention inference fast path (its fused op has no forward AD;
    under torch.func no tensor requires grad, so the fast path would be taken)."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def _batch_weighted_columns(batches, V, product) -> torch.Tensor:
    """``[Σ_b n_b product(v, b) / Σ_b n_b  for v in columns of V]`` stacked as columns, where
    ``n_b`` is the number of sequences in batch ``b``."""
    cols = []
    for v in V.T:
        total, count = 0, 0
        for batch in batches:
            n = batch["input_ids"].shape[0]
            total = total + n * product(v, batch)
            count += n
        cols.append(total / count)
    return torch.stack(cols, dim=1)


def ref_ggn_products(model, loss_fn, batches, names, V):
    """``Σ_b n_b J_bᵀ (∂²L_b/∂f²) J_b V / Σ_b n_b`` column by column, by forward mode (``J v``:
    torch.func.jvp), the output Hessian of ``loss_fn.on_outputs`` by forward-over-reverse, and a
    vjp -- independent of the engine's double backward and of ``output_hessian``."""
    theta = flat_params(model, names)

    def ggn_v(v, batch):
        def f_of(th):
            return loss_fn.outputs(_functional(model, names, th), batch)

        f, Jv = torch.func.jvp(f_of, (theta,), (v,))
        _, HJv = torch.func.jvp(torch.func.grad(lambda ff: loss_fn.on_outputs(ff, batch)), (f.detach(),), (Jv,))
        _, vjp = torch.func.vjp(f_of, theta)
        return vjp(HJv)[0]

    return _batch_weighted_columns(batches, V, ggn_v)


def ref_hvp(model, loss_fn, batches, names, V):
    """``Σ_b n_b ∇²L_b V / Σ_b n_b`` column by column, forward-over-reverse (torch.func.jvp of torch.func.grad)."""
    theta = flat_params(model, names)

    def hvp(v, batch):
        def L(th):
            return loss_fn(_functional(model, names, th), batch)

        return torch.func.jvp(torch.func.grad(L), (theta,), (v,))[1]

    return _batch_weighted_columns(batches, V, hvp)


def exact_hessian(model, loss_fn, names, batch) -> torch.Tensor:
    """The dense Hessian of ``loss_fn(model, batch)`` over the flat parameters ``names``, by
    torch.func.hessian on one torch thread under the math attention kernel."""
    theta = flat_params(model, names)

    def L(th):
        return loss_fn(lambda *a, **k: functional_call(model, unflatten(model, names, th), a, k), batch)

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with reference_mode():
            return torch.func.hessian(L)(theta)
    finally:
        torch.set_num_threads(n)
