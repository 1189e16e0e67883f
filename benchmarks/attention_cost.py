"""Memory and time of the curvature engine's products on a small causal transformer, per token.

    PYTHONPATH=$PWD python benchmarks/attention_cost.py [--threads 1] [--repeats 3]

A 2-block pre-LN causal LM from torch.nn (d=64, 4 heads, GELU MLP, vocab 96), float32, one batch of
B=4 sequences of length T. For each T it prints

* ``graph MB``: the saved-tensor memory of one batch's first-order graph (what ``cache_graph``
  keeps and ``memory_budget`` is compared with, as the engine measures it), and per token;
* ``B·h·T² MB``: the size of one (B, heads, T, T) float32 attention matrix per layer (summed over
  layers), the unit of the math kernel's T² term: compare its growth with the graph's;
* ``graph MB, flash kernel``: the same graph built with the fused flash kernel (what a plain
  training step keeps; it has no double backward, so no product can use it), for comparison;
* ``grad ms``: one gradient (forward + backward), the unit of cost;
* ``HVP cached ms``: one Hessian-vector product through the kept graph (``cache_graph="auto"``
  with a budget it fits);
* ``HVP rebuilt ms``: one product with ``cache_graph=False`` (forward, a backward with
  ``create_graph`` and the double backward, every time), and per token.

Numbers are from one machine and one thread; run it again for yours.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape.curvature import Hessian, gradient
from landscape.losses import causal_lm


class LM(nn.Module):
    def __init__(self, vocab: int = 96, d: int = 64, heads: int = 4, blocks: int = 2, ctx: int = 512):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(ctx, d))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(blocks))
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids):
        T = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos[:T]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        for b in self.blocks:
            x = b(x, src_mask=mask, is_causal=True)
        return self.head(x)


def graph_bytes(model, loss, batch, backend) -> int:
    """Saved-tensor bytes of the first-order graph (forward + a backward with create_graph) under one
    SDPA backend, counted like the engine's cache (unique storages, parameters excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in skip:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with sdpa_kernel(backend), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        g = torch.autograd.grad(loss(model, batch), list(model.parameters()), create_graph=True)
    del g
    return total


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, loss, B = LM().eval(), causal_lm(), 4
    heads, n_blocks = 4, 2
    print(f"| T | tokens | graph MB | per token kB | B·h·T² MB | graph MB, flash kernel | grad ms | HVP cached ms | HVP rebuilt ms | rebuilt per token ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for T in args.lengths:
        batches = [{"input_ids": torch.randint(0, 96, (B, T), generator=torch.Generator().manual_seed(T))}]
        H = Hessian(model, loss, batches, cache_graph="auto", memory_budget=1 << 40)  # keeps and measures
        v = torch.randn(H.shape[0])
        H @ v  # builds and measures the kept graph
        graph = H.cached_bytes
        cached = best(lambda: H @ v, args.repeats)
        R = Hessian(model, loss, batches, cache_graph=False)
        rebuilt = best(lambda: R @ v, args.repeats)
        grad = best(lambda: gradient(model, loss, batches), args.repeats)
        attn = n_blocks * B * heads * T * T * 4
        tokens = B * T
        flash = graph_bytes(model, loss, batches[0], SDPBackend.FLASH_ATTENTION)
        print(f"| {T} | {tokens} | {graph / 2**20:.1f} | {graph / tokens / 1024:.1f} | {attn / 2**20:.1f} | {flash / 2**20:.1f} | "
              f"{grad:.1f} | {cached:.1f} | {rebuilt:.1f} | {rebuilt / tokens:.3f} |")


if __name__ == "__main__":
    main()
