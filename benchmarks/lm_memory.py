"""Memory and time of Hessian-vector products on a causal LM, per token of context.

    PYTHONPATH=. python benchmarks/lm_memory.py            # about a minute on one CPU thread

The model is the TinyLM of analyses/tinylm.toml (width 64, 2 blocks, 4 heads; 117k parameters,
context raised to the longest window measured), untrained, float32, batch 8 windows, the loss
``causal_lm`` (next-token CE), one torch thread, the math attention kernel. For each window
length T it prints:

- **graph MiB** and **KiB/token**: the saved tensors of the first-order graph the operator
  caches (``Hessian(...)._core.cache.cached_bytes``, measured by the cache when it fills): what
  ``cache_graph=True`` keeps per batch, and what ``memory_budget`` is compared with;
- **cached HVP / uncached HVP / gradient**: CPU milliseconds of this process per product (median of
  5; CPU time, not wall, so that other users of a shared machine do not inflate it), and per
  1,000 tokens; ``cache_graph=False`` rebuilds the forward and the first backward every product;
- **batches cached at a budget of 1.5 graphs**: with two batches and ``memory_budget`` set to
  1.5 times one batch's graph, how many batches the operator keeps (the rest are rebuilt on
  every product).

Attention's saved tensors grow as T² per head (scores and softmax of the math kernel), the
rest as T, so the bytes per token rise with the context.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape.curvature import Hessian, gradient
from landscape.lm_model import TinyLM

BATCH, WIDTH, BLOCKS, HEADS, VOCAB = 8, 64, 2, 4, 97
LENGTHS = (32, 64, 128, 256)


def _loss():
    try:
        from landscape.losses import causal_lm
    except ImportError:  # before issue 17's losses: the same value
        from landscape.lm_teacher import next_token_loss
        return next_token_loss
    return causal_lm()


def _median_ms(fn, repeat: int = 5) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1000 * statistics.median(times)


def measure(T: int) -> dict:
    torch.manual_seed(0)
    model = TinyLM(VOCAB, WIDTH, BLOCKS, HEADS, context=max(LENGTHS)).eval()
    loss = _loss()
    gen = torch.Generator().manual_seed(T)
    batches = [{"input_ids": torch.randint(0, VOCAB, (BATCH, T), generator=gen)} for _ in range(2)]
    one = batches[:1]
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=gen)
    cached = Hessian(model, loss, one)  # "auto": measures the graph's bytes as it caches it
    cached @ v
    graph = cached._core.cache.cached_bytes
    uncached = Hessian(model, loss, one, cache_graph=False)
    ms_cached = _median_ms(lambda: cached @ v)
    ms_uncached = _median_ms(lambda: uncached @ v)
    ms_grad = _median_ms(lambda: gradient(model, loss, one))
    budget = Hessian(model, loss, batches, memory_budget=int(1.5 * graph))
    budget @ v
    tokens = BATCH * T
    return {"T": T, "tokens": tokens, "graph_mib": graph / 2**20, "kib_per_token": graph / 1024 / tokens,
            "hvp_cached_ms": ms_cached, "hvp_uncached_ms": ms_uncached, "grad_ms": ms_grad,
            "cached_per_1k": 1000 * ms_cached / tokens, "uncached_per_1k": 1000 * ms_uncached / tokens,
            "n_cached_budget": budget._core.cache.n_cached}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    with sdpa_kernel(SDPBackend.MATH):
        for T in LENGTHS:
            rows.append(measure(T))
    print(f"TinyLM width {WIDTH}, {BLOCKS} blocks, {HEADS} heads, batch {BATCH}, float32, 1 thread, torch "
          f"{torch.__version__}\n")
    print("| T | tokens | graph MiB | KiB/token | cached HVP ms (per 1k tokens) | uncached HVP ms (per 1k tokens) "
          "| gradient ms | uncached ÷ cached | batches cached at a budget of 1.5 graphs (of 2) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['T']} | {r['tokens']} | {r['graph_mib']:.1f} | {r['kib_per_token']:.1f} | "
              f"{r['hvp_cached_ms']:.1f} ({r['cached_per_1k']:.1f}) | {r['hvp_uncached_ms']:.1f} "
              f"({r['uncached_per_1k']:.1f}) | {r['grad_ms']:.1f} | {r['hvp_uncached_ms'] / r['hvp_cached_ms']:.2f} | "
              f"{r['n_cached_budget']} |")


if __name__ == "__main__":
    main()
